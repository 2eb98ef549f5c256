"""The wire: what travels between coordinator and workers, byte for byte (codec, protocol table, sealed values,
endpoint records, frame bounds). Imports nothing above itself in workers/."""
