"""How many rows batchrun reads, commits, merges and writes at a time: every such size in one
place, so that a reader sees them side by side and a test shrinks them in one module.

None of these is part of a format: a checkpoint or an output written with other sizes reads
the same (a segment's row groups and size class are read from the file, never assumed).
"""

from __future__ import annotations

# Reading the input: rows read and rendered at a time by a run (local or a Ray worker, whose
# shards are whole multiples of it) and by a Batch-file export; `batchrun estimate` reads
# twice as many, as it renders and counts but sends nothing.
READ_ROWS = 10_000
CHECK_ROWS = 100_000  # input rows read at a time while checking the checkpoint's anchor
WALK_ROWS = 65_536  # input rows walked at a time with their results (an evaluation)
TALLY_ROWS = 65_536  # rows a report reads at a time from a segment or its scratch file

# The checkpoint's merges: FANOUT segments of one size class are merged into one, and a class
# spans a factor of FANOUT, from SMALLEST rows up.
FANOUT = 4
SMALLEST = 2000
# What a run commits at a time (or fewer, after a few seconds): a segment of the smallest
# size class, so that a run's commits are the first tier the merger takes.
COMMIT_ROWS = SMALLEST
# What an import of Batch results commits as one segment. More than a run's: an import
# commits far faster than a run does, and at 2,000 a million rows once left 400 segments the
# background merger had not caught up with, each of them opened by every walk. Together with
# the import's GROUP_LINES, what an import holds: 5,000 and 50,000 peaked at 368 MB on a
# million answers, 10,000 and 100,000 at 443 MB, for a tenth more time (benchmarks/RESULTS.md).
IMPORT_COMMIT_ROWS = 5_000
# Rows a segment written by a merge (or a commit) holds per row group: what a cursor reads
# at once.
ROW_GROUP_ROWS = 8192

# Realigning committed results with moved input rows: committed rows per part of the
# external hash join, which bounds its memory (`batchrun.rows.anchor`).
ANCHOR_PART_ROWS = 100_000

# Comparing two outputs (`batchrun.compare.join`): how much of both files one part may hold
# (rows of the larger, bytes of the needed columns of both, uncompressed), and of a file one
# batch read from it. Parts beyond COMPARE_MAX_PARTS grow instead: that many files are open at
# once, under the usual limit of 1,024.
COMPARE_PART_ROWS, COMPARE_PART_BYTES, COMPARE_MAX_PARTS = 100_000, 32 << 20, 500
COMPARE_BATCH_ROWS, COMPARE_BATCH_BYTES = 100_000, 16 << 20

# Writing the output: input rows joined and written at a time, one row group each: a batch
# of 100,000 held 140 MB more at its peak than one of 16,384, and was no faster.
OUTPUT_ROWS = 16_384
