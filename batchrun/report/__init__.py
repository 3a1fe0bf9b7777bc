"""What a checkpoint says: figures, tallies and evaluations, shown as text or HTML; the
estimate before a run and the status during one."""
