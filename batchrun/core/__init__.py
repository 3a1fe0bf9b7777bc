"""The ground: columns, completions, tokens, SSE, progress, stats, quantiles, network,
secrets, and every batch and commit size."""
