"""The side-by-side benchmark: relay against bare aiohttp, on loopback.

Run ``python -m bench`` (a few minutes) or ``python -m bench --smoke`` (about
20 s, checks that everything still runs); ``python -m bench --help`` says more.
"""
