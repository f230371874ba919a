"""Signatures over modelcars: keys, and the cosign layout."""
