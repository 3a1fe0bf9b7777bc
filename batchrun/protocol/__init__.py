"""Talking to a gateway: the wire (HTTP), classifying what comes back, its rate-limit headers,
and the row's result made from it (`result`: the record the checkpoint commits)."""
