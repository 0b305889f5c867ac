# C types for the compiled build of streams.py (Cython's "augmenting .pxd"): the Python
# source stays the one implementation; these declarations only let Cython turn the
# per-message header walk into C. Keep them in step with the classes' __slots__.
cimport cython


cdef class SessionState:
    cdef public list queue
    cdef public bint authenticated
    cdef public bint ready
    cdef public object auth_request
    cdef public object backend_pid
    cdef public str client_encoding
    cdef public bint standard_conforming_strings
    cdef public Py_ssize_t groups_sent
    cdef public Py_ssize_t answering_group
    cdef public Py_ssize_t last_query_group
    cdef public object copy_guesses
    cdef public bint attribution_lost
    cdef public Py_ssize_t failed_group
    cdef public Py_ssize_t batch_replies


cdef class FrontendStream:
    cdef SessionState _state
    cdef Py_ssize_t _max
    cdef object _dialect
    cdef object _might_rewrite
    cdef object _might_redefine
    cdef bytearray _pending
    cdef Py_ssize_t _pending_need
    cdef object _scan
    cdef Py_ssize_t _scan_start
    cdef Py_ssize_t _stream_left
    cdef Py_ssize_t _executes
    cdef Py_ssize_t _syncs_since_execute
    cdef Py_ssize_t _executes_before_sync
    cdef dict _statements
    cdef dict _portals
    cdef bint _tracking
    cdef Py_ssize_t _unsynced
    cdef bint _after_query_copy
    cdef object _rewrite_word

    @cython.locals(
        state=SessionState, out=list, left=Py_ssize_t, n=Py_ssize_t, pos=Py_ssize_t,
        run_start=Py_ssize_t, max_size=Py_ssize_t, tracking=bint, compiled=bint,
        t=Py_ssize_t, length=Py_ssize_t, end=Py_ssize_t, word=bytes,
    )
    cpdef list feed(self, bytes data)


cdef class BackendStream:
    cdef SessionState _state
    cdef object _on_outcome
    cdef Py_ssize_t _completions
    cdef Py_ssize_t _copy_group
    cdef Py_ssize_t _copy_at
    cdef Py_ssize_t _skip
    cdef bytearray _carry
    cdef Py_ssize_t _carry_need
    cdef public bint strip_scram_plus

    @cython.locals(
        state=SessionState, kinds=bytes, n=Py_ssize_t, pos=Py_ssize_t, compiled=bint,
        completions=Py_ssize_t, replies=Py_ssize_t, length=Py_ssize_t, kind=Py_ssize_t,
    )
    cpdef list feed(self, bytes data)


@cython.locals(size=Py_ssize_t, first=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, last=Py_ssize_t)
cpdef bint contains_word(bytes data, Py_ssize_t start, Py_ssize_t end, bytes word)
