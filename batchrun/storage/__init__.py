"""The ground under the checkpoint: atomic local files, S3 (its store and its run lock),
disk space, open files."""
