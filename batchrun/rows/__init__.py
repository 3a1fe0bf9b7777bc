"""The rows' stages: read the input, render requests, ask, parse, score, record, plan, write out."""
