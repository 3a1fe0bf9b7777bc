"""OpenAI Batch files: a job's requests exported as files, their answers imported into
the checkpoint."""
