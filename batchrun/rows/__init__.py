"""The rows' stages: read the input, render requests, carry each row's request (asking again
after an answer that does not parse), parse, score, plan, write out."""
