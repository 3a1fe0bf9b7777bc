"""The ground: completions, tokens, SSE, progress, stats, quantiles, network,
secrets, another library's error quoted in a sentence (`messages`), and every batch and commit
size."""
