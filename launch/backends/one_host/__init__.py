"""The one-host backend: worker processes and thread hosts on this machine, ipc sockets in a private folder."""
