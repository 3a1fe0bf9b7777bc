"""batchrun: run tables of prompts through OpenAI-compatible chat APIs into Parquet."""

__version__ = "0.1.0"
