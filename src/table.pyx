# The table of peers (included by _core.pyx; declarations in table.pxd):
# State, its entries (Worker) and the slots of its deadline wheel (_Bucket),
# then the checks of the times and periods it is given.

cdef object _MISSING = object()  # an absent key (None is a value)


cdef class State:
    """The table of peers, ``workers`` (the fallback's ``State``).

    A slot of its deadline wheel is a _Bucket, a linked list through its
    workers, so that a heartbeat moves its worker without dict work; the
    slot the last heartbeat went to is remembered, as the next one most
    often goes there too.
    """

    def __init__(self, on_node_join=None, on_node_leave=None,
                 on_reject=None, on_drift=None):
        # the counters (event_count, dropped, ...) are C fields: they start at 0
        self.workers, self._wheel, self._slots = {}, {}, []
        self.on_node_join, self.on_node_leave = on_node_join, on_node_leave
        self.on_reject, self.on_drift = on_reject, on_drift
        self._last_slot = -1
        self._last_bucket = None

    cdef object _reject(self, str reason, object hostname, object detail):
        _common.reject_event(self, reason, hostname, detail)

    def event(self, event):
        """The fallback's ``State.event``, on a dict (any other mapping is
        copied into one, never changed)."""
        cdef Worker worker = self.apply(
            <dict>event if type(event) is dict else dict(event))
        if worker is None:
            return None
        return (worker, self._created), self._subject

    cdef Worker apply(self, dict event):
        """The work of :meth:`event`; sets ``_created`` and ``_subject``."""
        cdef double timestamp, received, freq = -1.0
        cdef Worker worker
        cdef bint created
        cdef str subject
        self.event_count += 1
        type_ = event.get('type')
        if type(type_) is not str:
            self._reject('bad_type', event.get('hostname'), type_)
            return None
        if type_ == 'worker-heartbeat':
            subject = 'heartbeat'
        else:
            group, _, subject = (<str>type_).partition('-')
            if group != 'worker':
                return None
        hostname = event.get('hostname')
        if type(hostname) is not str or not hostname:
            self._reject('bad_hostname', None, hostname)
            return None
        timestamp = as_seconds_c(event.get('timestamp'), _MAX_TIME)
        if timestamp < 0.0:
            self._reject('bad_timestamp', hostname, event.get('timestamp'))
            return None
        received = as_seconds_c(event.get('local_received'), _MAX_TIME)
        if received < 0.0:
            self._reject('bad_local_received', hostname, event.get('local_received'))
            return None
        raw_freq = event.get('freq', _MISSING)
        if raw_freq is not _MISSING:
            freq = as_seconds_c(raw_freq, _MAX_FREQ)
            if freq < 0.0:
                self._reject('bad_freq', hostname, raw_freq)
                return None
        reserved = first_reserved_key(event)
        if reserved is not None:
            event = _common.clean_reserved(self, event, hostname, reserved)
        self._subject = subject
        if subject == 'offline':
            return self._offline(hostname, event)
        worker = self._entry(hostname)
        worker.materialize()
        worker._fields.update(event)
        if freq > 0.0:
            worker._freq = freq
        self._heartbeat(worker, timestamp, received)
        if self._created or subject == 'online':
            self._joined(worker)
        return worker

    cdef bint take(self, dict event) except -1:
        """:meth:`apply`; False if the event was dropped as bad input."""
        cdef Py_ssize_t dropped = self.dropped
        self.apply(event)
        return self.dropped == dropped

    cdef void apply_event(self, object event, str hostname, bint online,
                          double timestamp, double freq, double received) except *:
        """Apply a validated standard worker event (not offline): the fast
        lane of :meth:`apply`, with the same effects."""
        self.event_count += 1
        cdef Worker worker = self._entry(hostname)
        worker.set_event(event, received)
        worker._freq = freq
        self._heartbeat(worker, timestamp, received)
        if self._created or online:
            self._joined(worker)

    cdef inline void _joined(self, Worker worker) except *:
        # in C, not shared: a worker's cold start meets every peer at once
        self.joins += 1
        if self.on_node_join is not None:
            self.on_node_join(worker)

    cdef inline Worker _entry(self, object hostname):
        """The entry of *hostname*, created if there is none (``_created``
        says which)."""
        cdef Worker worker
        found = self.workers.get(hostname)
        self._created = found is None
        if found is not None:
            return <Worker>found
        worker = Worker(hostname)
        self.workers[hostname] = worker
        return worker

    cdef Worker _offline(self, object hostname, dict event):
        cdef Worker worker
        self._created = False
        found = self.workers.get(hostname)
        if found is None:  # unknown host: tell, but do not store
            worker = Worker(hostname)
        else:
            worker = <Worker>found
            self._unschedule(worker)
            del self.workers[hostname]
            worker.materialize()
        worker._fields.update(event)
        worker._n = 0
        _common.left(self, worker)
        return worker

    cdef inline void _heartbeat(self, Worker worker, double timestamp, double received) except *:
        cdef long long drift
        if not worker._drift_warned:
            drift = <long long>received - <long long>timestamp
            if drift < 0:
                drift = -drift
            if drift > _DRIFT_MAX:
                worker._drift_warned = True
                if self.on_drift is not None:
                    self.on_drift(worker, drift, received, timestamp)
        worker.add_heartbeat(received)
        self._schedule(worker)

    # -- the deadline wheel ------------------------------------------------

    cdef inline void _schedule(self, Worker worker) except *:
        cdef long long slot = <long long>(worker._expires * _SLOTS_PER_SECOND)
        cdef _Bucket bucket
        if slot == worker._slot:
            return
        self._unschedule(worker)
        # heartbeats arrive in time order, so most land in the slot of the
        # previous one: remember it and skip the wheel lookup
        if slot == self._last_slot and self._last_bucket is not None:
            bucket = self._last_bucket
        else:
            key = slot
            found = self._wheel.get(key)
            if found is None:
                bucket = _Bucket()
                self._wheel[key] = bucket
                _heappush(self._slots, key)
            else:
                bucket = <_Bucket>found
            self._last_slot = slot
            self._last_bucket = bucket
        bucket.append(worker)
        worker._slot = slot
        worker._bucket = bucket

    cdef inline void _unschedule(self, Worker worker) except *:
        cdef _Bucket bucket = worker._bucket
        if bucket is None:
            return
        bucket.remove(worker)
        if not bucket.count:
            self._wheel.pop(worker._slot, None)
            if bucket is self._last_bucket:
                self._last_bucket = None
        worker._slot = -1
        worker._bucket = None

    def sweep(self, now=None):
        """The fallback's ``State.sweep``, over linked buckets."""
        cdef double t = _time() if now is None else now
        cdef long long current = <long long>(t * _SLOTS_PER_SECOND)
        cdef long long slot
        cdef list slots = self._slots, lost = []
        cdef dict wheel = self._wheel, workers = self.workers
        cdef _Bucket bucket
        cdef Worker worker
        while slots and <long long>slots[0] <= current:
            slot = slots[0]
            found = wheel.get(slot)
            if found is None:  # emptied since it was pushed
                _heappop(slots)
                continue
            bucket = <_Bucket>found
            if bucket is self._last_bucket:
                self._last_bucket = None
            for w in bucket.members():
                worker = <Worker>w
                if slot == current and t < worker._expires:
                    continue  # the current slot: not all of it is due yet
                bucket.remove(worker)
                worker._slot = -1
                worker._bucket = None
                # user code may have removed or replaced the entry
                if workers.get(worker._hostname) is worker:
                    del workers[worker._hostname]
                    lost.append(worker)
            if not bucket.count:
                _heappop(slots)
                del wheel[slot]
            if slot == current:
                break
        self.losses += len(lost)
        return lost

    # -- queries -----------------------------------------------------------

    def expired(self, now=None):
        """The fallback's ``State.expired``."""
        cdef double t = _time() if now is None else now
        cdef long long current = <long long>(t * _SLOTS_PER_SECOND)
        cdef dict workers = self.workers
        cdef list found = []
        for key, bucket in self._wheel.items():
            if <long long>key <= current:
                for w in (<_Bucket>bucket).members():
                    hostname = (<Worker>w)._hostname
                    if not t < (<Worker>w)._expires and workers.get(hostname) is w:
                        found.append(hostname)
        return found

    def alive_workers(self):
        """The fallback's ``State.alive_workers``."""
        cdef double t = _time()
        cdef Worker worker
        alive = []
        for w in self.workers.values():
            worker = <Worker>w
            if worker._n and t < worker._expires:
                alive.append(worker)
        return iter(alive)

    def alive_count(self, now=None):
        """The fallback's ``State.alive_count``: the due buckets' dead
        workers counted, the others not visited."""
        cdef double t = _time() if now is None else now
        cdef long long current = <long long>(t * _SLOTS_PER_SECOND)
        cdef long long slot
        cdef Py_ssize_t dead = 0
        for key, bucket in self._wheel.items():
            slot = key
            if slot < current:
                dead += (<_Bucket>bucket).count
            elif slot == current:
                for w in (<_Bucket>bucket).members():
                    if not t < (<Worker>w)._expires:
                        dead += 1
        return len(self.workers) - dead

    def is_alive(self, hostname, now=None):
        found = self.workers.get(hostname)
        if found is None or not (<Worker>found)._n:
            return False
        return (_time() if now is None else now) < (<Worker>found)._expires

    def clear(self):
        cdef Worker worker
        self.workers.clear()
        for bucket in self._wheel.values():  # unlink, so none is left half in
            for w in (<_Bucket>bucket).members():
                worker = <Worker>w
                (<_Bucket>bucket).remove(worker)
                worker._slot = -1
                worker._bucket = None
        self._wheel.clear()
        del self._slots[:]
        self._last_bucket = None

    def __len__(self):
        return len(self.workers)

    def __repr__(self):
        return f'<State: workers={len(self.workers)} events={self.event_count}>'


cdef dict _DEFAULTS = dict(DEFAULT_FIELDS)


cdef class Worker:
    """A tracked peer, with the attributes of ``celery.events.state.Worker``
    and every other field the peer sent (the fallback's ``Worker``).

    Its heartbeats are a C array and its deadline a C double; the fields
    of its last standard event are served from that event (its raw bytes,
    decoded on first use) until something needs them in ``__dict__``.
    """

    heartbeat_max = _HB_MAX
    expire_window = _common.EXPIRE_WINDOW

    def __init__(self, hostname=None):
        # the C fields start at 0: no heartbeat (_n), no deadline, not warned
        self._fields = PyObject_GenericGetDict(self, NULL)
        self._fields['hostname'] = hostname
        self._hostname = hostname
        self._freq = 60.0
        self._slot = -1  # in no slot of the wheel

    @property
    def heartbeats(self):
        """A list of the C array's receive times."""
        return [self._hb[i] for i in range(self._n)]

    @property
    def heartbeat_expires(self):
        if self._n == 0:
            raise IndexError('list index out of range')
        return self._hb[self._n - 1] + self._freq * _EXPIRE_FACTOR

    @property
    def alive(self):
        return self._n > 0 and <double>_time() < self._expires

    status_string = property(_common.worker_status_string)
    id = property(_common.worker_id)
    update = _common.worker_update  # materializes first

    def __getattr__(self, name):
        # only called for names not in __dict__
        if self._event is not None:
            if name == 'local_received':
                return self._received
            if name in _EVENT_FIELD_SET:
                return getattr(self.decoded_event(), name)
        if name in _DEFAULTS:  # stock Worker's defaults, never set
            return _DEFAULTS[name]
        raise AttributeError(
            f"'{type(self).__name__}' object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if self._event is not None and name in _EVENT_FIELD_SET:
            self.materialize()
        PyObject_GenericSetAttr(self, name, value)

    cdef void set_event(self, object event, double received) except *:
        """Take a standard event's fields without copying them."""
        cdef dict fields = self._fields
        if self._event is None and fields:
            for name in _EVENT_FIELD_SET:
                fields.pop(name, None)
        self._event = event
        self._received = received

    cdef object decoded_event(self):
        if type(self._event) is bytes:  # checked by scan_standard: cannot fail
            self._event = _decode_event(self._event)
        return self._event

    cpdef materialize(self):
        """Move the last standard event's fields into ``__dict__``."""
        event = self.decoded_event()
        if event is not None:
            self._event = None
            for name in _EVENT_FIELDS:
                self._fields[name] = getattr(event, name)
            self._fields['local_received'] = self._received

    def __repr__(self):
        return '<Worker: {0.hostname} ({0.status_string} clock:{0.clock})'.format(self)

    cdef inline void add_heartbeat(self, double received):
        # stock: drop the oldest of 4, append if newest, else insort
        cdef int n = self._n, i
        if n > _HB_MAX - 1:
            for i in range(n - 1):
                self._hb[i] = self._hb[i + 1]
            n -= 1
        if n and received > self._hb[n - 1]:
            self._hb[n] = received
        else:
            i = n
            while i > 0 and self._hb[i - 1] > received:
                self._hb[i] = self._hb[i - 1]
                i -= 1
            self._hb[i] = received
        self._n = n + 1
        self._expires = self._hb[n] + self._freq * _EXPIRE_FACTOR


cdef class _Bucket:
    """The workers of one slot of the deadline wheel, in the order they
    entered it: a doubly linked list through ``Worker._next``/``_prev``, so
    that a heartbeat moves its worker between slots without dict work."""

    cdef inline void append(self, Worker worker) noexcept:
        worker._prev = self.tail
        worker._next = None
        if self.tail is None:
            self.head = worker
        else:
            self.tail._next = worker
        self.tail = worker
        self.count += 1

    cdef inline void remove(self, Worker worker) noexcept:
        if worker._prev is None:
            self.head = worker._next
        else:
            worker._prev._next = worker._next
        if worker._next is None:
            self.tail = worker._prev
        else:
            worker._next._prev = worker._prev
        worker._next = worker._prev = None
        self.count -= 1

    cdef list members(self):
        """Its workers, in order."""
        cdef list found = []
        cdef Worker worker = self.head
        while worker is not None:
            found.append(worker)
            worker = worker._next
        return found


cdef double as_seconds_c(object value, double upper):
    """*value* as a double in (0, upper], else -1.0."""
    cdef double number
    kind = type(value)
    if kind is float:
        number = value
    elif kind is int or kind is Decimal:
        if not 0 < value <= upper:
            return -1.0
        number = float(value)
    else:
        return -1.0
    if 0.0 < number <= upper:
        return number
    return -1.0


def as_seconds(value, upper):
    cdef double number = as_seconds_c(value, upper)
    return None if number < 0.0 else number
