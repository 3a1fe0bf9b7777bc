"""A run: its lifecycle and engine (local), its lanes, pacing, retries and the quota gate."""
