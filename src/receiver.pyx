# The receiver: Gossip.on_message and on_raw (included by _core.pyx;
# declarations in receiver.pxd).


cdef inline object _delivered_bytes(str body, object content_encoding):
    """``_common.delivered_bytes`` (py-amqp's text bodies as the wire's
    bytes), without a Python call on every message of kombu's consumer."""
    if not (_eq(content_encoding, 'utf-8') or _eq(content_encoding, 'utf8')):
        return None
    try:
        return body.encode('utf-8')
    except UnicodeEncodeError:
        return None


cdef class Receiver:
    """``Gossip.on_message`` (the fallback's ``Receiver``).

    The bootstep's swappable attributes are cached (:meth:`refresh`); a
    kombu message is read through its slots; a standard worker event is
    applied without a dict (:meth:`fast_lane`, :meth:`scanned_lane`), and
    any other goes the general way, with the fallback's checks in C.
    """

    @property
    def accept(self):
        """Content types we decode (kombu's prepared ``accept`` set)."""
        return self._accept

    @accept.setter
    def accept(self, value):
        self._accept = value
        self._json_accepted = value is None or JSON in value

    def __init__(self, gossip, state, clock, accept):
        self.gossip = gossip
        self.state = state
        self._state = state if type(state) is State else None
        self.clock = clock
        self.accept = accept
        # bound once, so that identity tells the fast path from a swap-in
        self.state_event = state.event if state is not None else None
        self.fast_prepare = self.prepare
        self._hosts = _HostIndex()
        # the counters (received, applied, ...) are C fields: they start at 0
        self.refresh()

    stats = _common.receiver_stats

    def refresh(self):
        """Re-read the bootstep's ``hostname``, ``clock``, ``update_state``
        and ``event_handlers`` (called by ``Gossip.__setattr__``)."""
        gossip = self.gossip
        self._hostname = getattr(gossip, 'hostname', None)
        self._clock = getattr(gossip, 'clock', None)
        self._update_state = getattr(gossip, 'update_state', None)
        self._event_handlers = getattr(gossip, 'event_handlers', None)

    # -- decoding ----------------------------------------------------------

    cdef object raw_json(self, object body, object content_type,
                         object content_encoding, object headers):
        """*body* if we may decode it ourselves (JSON bytes in ``accept``,
        UTF-8, not compressed, no kombu ``__type__`` objects), else None."""
        if (_fast_json is None or type(body) is not bytes
                or _ne(content_type, JSON) or not self._json_accepted):
            return None
        if not (content_encoding is None or _eq(content_encoding, 'utf-8')
                or _eq(content_encoding, 'utf8')):
            return None
        if type(headers) is not dict or (<dict>headers).get('compression'):
            return None
        if has_type_marker(<bytes>body):
            return None
        return body

    cdef inline bint slotted(self, object message) except -1:
        """True if *message* is a kombu Message whose attributes we read
        from its slots (see :func:`_slotted`)."""
        if type(message) is self._message_type:
            return True
        if isinstance(message, Message) and _slotted(type(message)):
            self._message_type = type(message)
            return True
        return False

    cpdef object _message_raw(self, object message):
        """:meth:`raw_json` of a real kombu message, else None."""
        if self.slotted(message):
            body = _slot(message, _OFF_BODY)
            content_encoding = _slot(message, _OFF_CONTENT_ENCODING)
            if type(body) is str:
                body = _delivered_bytes(body, content_encoding)
            return self.raw_json(
                body, _slot(message, _OFF_CONTENT_TYPE),
                content_encoding, _slot(message, _OFF_HEADERS))
        if not isinstance(message, Message):
            return None
        body = message.body
        if type(body) is str:
            body = _delivered_bytes(body, message.content_encoding)
        return self.raw_json(body, message.content_type,
                             message.content_encoding, message.headers)

    decode = _common.decode

    cdef object body_of(self, object message, object raw):
        """``_common.decoded(self, message, raw)``, with the usual case in
        C: JSON bytes that msgspec decodes to a dict."""
        if raw is not None:
            try:
                found = _fast_json(raw)
            except Exception:
                found = None  # NaN, Infinity, bad UTF-8: the general way decides
            if type(found) is dict:
                return found
        return _common.decoded(self, message, raw)

    cdef bint fast_lane(self, object raw, dict headers) except -1:
        """Handle a standard worker event without building a dict.

        Returns False, having changed nothing, when the message is anything
        else (another shape, bad or odd values, offline, own events, header
        mismatches...): the general path then handles it.
        """
        cdef double timestamp, freq
        cdef Scan scan
        if scan_standard(<bytes>raw, &scan):
            return self.scanned_lane(raw, <const char*><char*>raw, &scan, headers)
        try:
            event = _decode_event(raw)
        except Exception:
            return False
        if _OFFSETS_OK:
            hostname = _slot(event, _OFF_HOSTNAME)
            type_ = _slot(event, _OFF_TYPE)
            clock_value = _slot(event, _OFF_CLOCK)
            timestamp_value = _slot(event, _OFF_TIMESTAMP)
            freq_value = _slot(event, _OFF_FREQ)
        else:
            hostname = event.hostname
            type_ = event.type
            clock_value = event.clock
            timestamp_value = event.timestamp
            freq_value = event.freq
        if type(hostname) is not str or not hostname:
            return False
        header_host = headers.get('hostname')
        if header_host and header_host != hostname:
            return False
        if hostname == self._hostname:
            return False
        if (type(type_) is not str or not (<str>type_).startswith('worker-')
                or type_ == 'worker-offline'):
            return False
        if not valid_peer_clock_c(clock_value):
            return False
        timestamp = as_seconds_c(timestamp_value, _MAX_TIME)
        freq = as_seconds_c(freq_value, _MAX_FREQ)
        if timestamp < 0.0 or freq < 0.0:
            return False
        clock = self._clock
        if type(clock) is Clock:
            (<Clock>clock).adjust_c(clock_value)
        else:
            clock.adjust(clock_value)
        self._state.apply_event(event, hostname, type_ == 'worker-online',
                                timestamp, freq, <double>_time())
        self.applied += 1
        return True

    cdef bint scanned_lane(self, bytes raw, const char* p, Scan* scan,
                           dict headers) except -1:
        """:meth:`fast_lane` for a body that :func:`scan_standard` read."""
        cdef Py_ssize_t type_length = scan.type_end - scan.type_start
        cdef Py_ssize_t host_length = scan.host_end - scan.host_start
        cdef const char* type_ = p + scan.type_start
        cdef str hostname
        cdef bint indexed
        if host_length <= 0:
            return False
        hostname = self._hosts.find(p + scan.host_start, host_length)
        indexed = hostname is not None
        if not indexed:
            hostname = PyUnicode_DecodeASCII(p + scan.host_start, host_length, NULL)
        header_host = headers.get('hostname')
        if header_host and _ne(header_host, hostname):
            return False
        if _eq(hostname, self._hostname):
            return False
        if type_length < 7 or memcmp(type_, b"worker-", 7) != 0 or (
                type_length == 14 and memcmp(type_, b"worker-offline", 14) == 0):
            return False
        if not (scan.clock <= _MAX_PEER_CLOCK and 0.0 < scan.timestamp <= _MAX_TIME
                and 0.0 < scan.freq <= _MAX_FREQ):
            return False
        clock = self._clock
        if type(clock) is Clock:
            (<Clock>clock).adjust_c(scan.clock)
        else:
            clock.adjust(scan.clock)
        self._state.apply_event(
            raw, hostname,
            type_length == 13 and memcmp(type_, b"worker-online", 13) == 0,
            scan.timestamp, scan.freq, <double>_time())
        if not indexed:
            self._hosts.add(hostname, len(self._state.workers))
        self.applied += 1
        return True

    cdef object _reject(self, str reason, object hostname, object detail):
        self.gossip._reject(reason, hostname, detail)
        return None

    # -- the event's preparation (event_from_message, localize=False) -------

    def prepare(self, body):
        """``_common.prepare``, in C for a dict (every decoded body is one):
        *body* is stamped in place and returned, whatever mapping it is, as
        stock does."""
        if type(body) is not dict:
            return _common.prepare(self, body)
        return body['type'], self.prepare_c(<dict>body)

    cdef dict prepare_c(self, dict body):
        clock = self._clock
        cdef Clock fast = clock if type(clock) is Clock else None
        type_ = body['type']
        if type_ == 'task-sent':
            body['clock'] = (clock.value or 1) - 1
            clock.adjust(body['clock'])
        else:
            value = body.get('clock', None)
            if value is None and 'clock' not in body:
                body['clock'] = fast.forward_c() if fast is not None else clock.forward()
            elif valid_peer_clock_c(value):
                if fast is not None:
                    fast.adjust_c(value)
                else:
                    clock.adjust(value)
            else:
                self._reject('bad_clock', body.get('hostname'), value)
                body['clock'] = fast.forward_c() if fast is not None else clock.forward()
        body['local_received'] = _time()
        return body

    # -- on_message --------------------------------------------------------

    def on_message(self, prepare, message):
        self.received += 1
        try:
            if self.slotted(message):
                info = _slot(message, _OFF_DELIVERY_INFO)
            else:
                info = message.delivery_info
            routing_key = (<dict>info)['routing_key'] if type(info) is dict else info['routing_key']
        except Exception:
            return self._reject('bad_message', None, 'no routing key')
        return self._handle(prepare, routing_key, message, None, None)

    def on_raw(self, routing_key, headers, body, content_type=JSON,
               content_encoding='utf-8', exchange='celeryev'):
        """The fallback's ``Receiver.on_raw``."""
        return self._on_raw(routing_key, headers, body, content_type, content_encoding, exchange)

    def apply_held(self, list items, double deadline, Py_ssize_t minimum, other, error):
        """The fallback's ``Receiver.apply_held``: the readers' apply loop
        without a Python call per event."""
        cdef Py_ssize_t done = 0, total = len(items)
        cdef tuple parts
        monotonic = time.monotonic
        while done < total:
            item = items[done]
            done += 1
            try:
                if type(item) is tuple and len(<tuple>item) == 6:
                    parts = <tuple>item
                    self._on_raw(parts[0], parts[1], parts[2], parts[3], parts[4], parts[5])
                elif type(item) is tuple:
                    self.on_raw(*item)
                else:
                    other(item)
            except Exception as exc:  # on_raw reports bad input itself: a bug
                error(exc)
            if not done & 7 and done >= minimum and monotonic() >= deadline:
                break
        return done

    cdef object _on_raw(self, object routing_key, object headers, object body,
                        object content_type, object content_encoding, object exchange):
        if headers is None:
            headers = {}
        raw = self.raw_json(body, content_type, content_encoding, headers)
        if raw is None:
            return _common.on_parts(self, routing_key, headers, body, content_type,
                                    content_encoding, exchange)
        self.received += 1
        return self._handle(self.fast_prepare, routing_key, None, raw, headers)

    cdef object _handle(self, object prepare, object routing_key, object message,
                        object raw, object headers):
        gossip = self.gossip
        if type(routing_key) is not str:
            return self._reject('bad_message', None, routing_key)
        # For redis when `fanout_patterns=False` (celery#1882)
        if _is_task_key(<str>routing_key):
            self.skipped_tasks += 1
            return None
        handlers = self._event_handlers
        if type(handlers) is dict:
            handler = _handler_for(<dict>handlers, <str>routing_key)
        else:
            handler = handlers.get(routing_key)
        if handler is not None:
            payload = _common.decoded(self, message, raw)
            return None if payload is None else gossip._call_event_handler(handler, payload)
        if (prepare is self.fast_prepare and self._state is not None
                and self._update_state is self.state_event):
            if message is not None:
                raw = self._message_raw(message)
                if raw is not None:  # read as message_raw read the rest
                    headers = (_slot(message, _OFF_HEADERS)
                               if type(message) is self._message_type
                               else message.headers)
            if raw is not None:
                try:
                    if self.fast_lane(raw, <dict>headers):
                        return None
                except Exception as exc:  # never raise out of the consumer
                    return self._reject('error', None, exc)
        found = self.body_of(message, raw)
        if found is None:
            return None
        cdef dict body = <dict>found
        if message is not None:
            headers = message.headers
        header_host = (<dict>headers).get('hostname') if type(headers) is dict else None
        body_host = body.get('hostname')
        hostname = header_host or body_host
        if type(hostname) is not str or not hostname:
            return self._reject('bad_hostname', None, hostname)
        if header_host and body_host is not None and _ne(body_host, header_host):
            return self._reject('hostname_mismatch', header_host, body_host)
        if hostname == self._hostname:
            self.own += 1
            clock = self._clock
            if type(clock) is Clock:
                (<Clock>clock).forward_c()
            else:
                clock.forward()
            return None
        if type(body.get('type')) is not str:
            return self._reject('bad_type', hostname, body.get('type'))
        try:
            event = self.prepare_c(body) if prepare is self.fast_prepare else prepare(body)[1]
            update_state = self._update_state
            if update_state is not self.state_event or self._state is None:
                update_state(event)
            elif not self._state.take(<dict>event):
                return None  # bad input, counted by the state
        except Exception as exc:  # never raise out of the consumer
            return self._reject('error', hostname, exc)
        self.applied += 1
        return None
