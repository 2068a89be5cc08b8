# cython: language_level=3, freethreading_compatible=False
"""Compiled hot path of gossip_fast (built as ``gossip_fast._core``).

The same classes, names and behaviour as ``gossip_fast/_core_py.py`` (read
that module's docstrings for the contract); ``tests/test_differential.py``
holds the two to the same results.  What differs is the representation: a
worker's heartbeats are a C ring of four doubles and its deadline a C double,
the clock is a C int64, and the per-message path calls the C API instead of
Python methods wherever it can.

This file is the table of contents: each concern is a file of its own,
included here (Cython's ``include`` is textual, so they all compile into
this one module and inline across files); the C declarations of each are in
the ``.pxd`` of the same name, gathered by ``gossip_fast/_core.pxd``.
"""
import heapq
import threading
import time
from decimal import Decimal

from kombu.message import Message

from . import _common  # the limits and the logic both cores share

include "constants.pyx"  # limits and module-level values

# -- the domain ----------------------------------------------------------------
include "clock.pyx"      # Clock: the Lamport clock, a C int64
include "table.pyx"      # State, Worker: the table of peers and its deadline wheel
include "receiver.pyx"   # Receiver: Gossip.on_message and on_raw
include "pubsub.pyx"     # PubSubScanner: the Redis pub/sub stream, split in one pass
include "amqpframes.pyx"  # DeliveryScanner: an AMQP consumer's deliveries, split
include "shedding.pyx"   # coalesce(), held(): a reader's backlog

# -- the tricks behind it ------------------------------------------------------
include "scanner.pyx"    # scan_standard(): a Celery event body read without a dict
include "slots.pyx"      # msgspec Structs and kombu Messages read at slot offsets
include "hosts.pyx"      # _HostIndex: a hostname's str found by its bytes
include "compare.pyx"    # str and key comparisons without hashing
