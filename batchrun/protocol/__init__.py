"""Talking to a gateway: the wire (HTTP), classifying what comes back, its rate-limit headers."""
