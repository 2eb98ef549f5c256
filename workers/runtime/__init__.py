"""The worker runtime: the loop, liveness, process set-up, thread hosts, faults, replay log, layer files and
trace. Imports links/ and wire/; nothing in workers/ imports it back."""
