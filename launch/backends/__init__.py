"""Backends: how a run gets its workers started and linked (one host: forkserver and private sockets; elastic:
torchrun ranks on several machines)."""
