"""The checkpoint: a folder of sorted segments, committed atomically, merged, walked in order."""
