# The declarations of gossip_fast._core: its C types, one .pxd per concern,
# next to the .pyx that implements it (_core.pyx includes those).
#
# This file is here, not beside src/_core.pyx, because Cython finds a
# module's own declarations by the module's import name (gossip_fast._core),
# looking under the folder the .pyx is in.

cimport cython

# the tricks first: the domain's declarations use their types
include "../compare.pxd"
include "../slots.pxd"
include "../scanner.pxd"
include "../hosts.pxd"
include "../shedding.pxd"
# the domain
include "../clock.pxd"
include "../table.pxd"
include "../receiver.pxd"
include "../pubsub.pxd"
include "../amqpframes.pxd"
