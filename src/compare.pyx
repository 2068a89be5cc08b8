# Comparisons and searches without Python's generic machinery (included by
# _core.pyx; declarations in compare.pxd): a new str per message compared
# with a few known ones costs less than hashing it.


# ``a == b`` and ``a != b`` as Python evaluates them; for two exact strs
# without the call (Cython's compares them with PyUnicode_Compare, which
# orders them).
cdef inline bint _eq(object a, object b) except -1:
    if type(a) is str and type(b) is str:
        return gf_str_equal(a, b)
    return a == b


cdef inline bint _ne(object a, object b) except -1:
    if type(a) is str and type(b) is str:
        return not gf_str_equal(a, b)
    return a != b


cdef bint has_type_marker(bytes data):
    """True if the raw JSON contains ``__type__`` (kombu's object hook)."""
    cdef Py_ssize_t n = len(data), i = 0
    cdef const unsigned char* p = <const unsigned char*><char*>data
    cdef const unsigned char* found
    # kombu's encodings are nested objects: with no second '{' there are none
    if n < 2 or memchr(p + 1, 123, n - 1) == NULL:  # '{'
        return False
    while i + 8 <= n:
        found = <const unsigned char*>memchr(p + i, 95, n - 7 - i)  # '_'
        if found == NULL:
            return False
        if memcmp(found, b"__type__", 8) == 0:
            return True
        i = (found - p) + 1
    return False


cdef object _handler_for(dict handlers, str key):
    """``handlers.get(key)``.  Gossip has two handlers: comparing *key* (a
    new str per message) with their keys costs less than hashing it."""
    cdef Py_ssize_t pos = 0
    cdef PyObject* name
    cdef PyObject* handler
    if len(handlers) > _FEW_HANDLERS:
        return handlers.get(key)
    while PyDict_Next(handlers, &pos, &name, &handler):
        if type(<object>name) is not str:  # its __eq__ decides: let the dict ask
            return handlers.get(key)
        if gf_str_equal(<object>name, key):
            return <object>handler
    return None


cdef inline bint _is_task_key(str key):
    """*key* is ``task`` or starts with ``task.`` (a task message)."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(key)
    return (n >= 4 and PyUnicode_READ_CHAR(key, 0) == u't'
            and PyUnicode_READ_CHAR(key, 1) == u'a'
            and PyUnicode_READ_CHAR(key, 2) == u's'
            and PyUnicode_READ_CHAR(key, 3) == u'k'
            and (n == 4 or PyUnicode_READ_CHAR(key, 4) == u'.'))


cdef object first_reserved_key(dict event):
    """The first key of *event* in RESERVED_FIELDS, or None.

    Walks the keys once and filters them on (first character, length), a
    pair no field Celery sends shares with a reserved name, so a normal
    heartbeat costs no hash lookups here.
    """
    cdef Py_ssize_t pos = 0, n
    cdef PyObject* key
    cdef PyObject* value
    cdef Py_UCS4 first
    while PyDict_Next(event, &pos, &key, &value):
        if not PyUnicode_CheckExact(<object>key):
            continue
        n = PyUnicode_GET_LENGTH(<object>key)
        if n < 2:
            continue
        first = PyUnicode_READ_CHAR(<object>key, 0)
        if ((first == 'h' and (n == 10 or n == 13 or n == 17))
                or (first == 'e' and (n == 5 or n == 13))
                or (first == 'a' and n == 5)
                or (first == 'i' and n == 2)
                or (first == 's' and n == 13)
                or (first == 'u' and n == 6)
                or first == '_'):
            if <object>key in RESERVED_FIELDS:
                return <object>key
    return None
