# Shedding a backlog (included by _core.pyx): what the fast receive path
# (gossip_fast/fastpath) takes from the compiled core when it is the one in
# use; its readers do the same in Python with the pure-Python core.

# coalesce() is gossip_fast.fastpath.base.coalesce, compiled: a pass over a
# backlog of held events runs in the worker's event loop, so its time is the
# loop's (docs/internals.md has what it took in Python).

cdef str _HEARTBEAT = 'worker.heartbeat'


def coalesce(list items, heartbeat_sender, Py_ssize_t max_pending):
    """``gossip_fast.fastpath.base.coalesce`` for held events that are
    ``on_raw`` argument tuples (or anything else, never shed): the same
    result, without a Python call per item.  *heartbeat_sender* is
    ignored: the rule is base.heartbeat_sender's, inlined."""
    cdef Py_ssize_t n = len(items), i, excess, shed = 0
    cdef list kept = []
    cdef set seen = set()
    cdef object item, sender
    cdef bytearray beat = bytearray(n)  # 1: a heartbeat kept in `kept`
    cdef Py_ssize_t k
    for i in range(n - 1, -1, -1):
        item = items[i]
        sender = _heartbeat_sender_c(item)
        if sender is not None:
            if sender:
                if sender in seen:
                    shed += 1
                    continue
                seen.add(sender)
            beat[len(kept)] = 1
        kept.append(item)
    kept.reverse()
    excess = len(kept) - max_pending
    if excess > 0:
        trimmed = []
        n = len(kept)
        for k in range(n):
            if excess > 0 and beat[n - 1 - k]:
                excess -= 1
                shed += 1
                continue
            trimmed.append(kept[k])
        kept = trimmed
    return kept, shed


cdef inline object _heartbeat_sender_c(object item):
    """base.heartbeat_sender, inlined: the sender of a held heartbeat
    ('' if unknown), None for anything else."""
    if type(item) is not tuple or len(<tuple>item) < 2:
        return None
    key = (<tuple>item)[0]
    if not (key is _HEARTBEAT or (type(key) is str and key == _HEARTBEAT)):
        return None
    headers = (<tuple>item)[1]
    if type(headers) is dict:
        found = (<dict>headers).get('hostname')
        if type(found) is str and found:
            return found
    return ''


cpdef tuple held(tuple item):
    """*item* (a held event's ``on_raw`` arguments), taken out of the
    cyclic garbage collector's watch, and returned.

    A reader that falls behind holds tens of thousands of these; each is a
    new tracked object that survives a few collections, so CPython soon
    runs full collections over the whole heap, the table of every peer
    included (docs/internals.md has what they cost).  CPython only untracks
    such a tuple itself once a collection has looked at it.  Safe: a cycle
    through the tuple would need one of its items to refer back to it, and
    nothing but the reader's backlog ever refers to it.
    """
    PyObject_GC_UnTrack(<void*>item)
    return item
