/* The SFU's fan-out leaf: SRTP-protect each routed copy and send them with sendmmsg.
 *
 * sfu/native.py is its only caller and says why it exists; this file is the
 * per-datagram loop and nothing else. Everything it touches is owned by Python
 * objects: the routed list is the forwarder's, the subscriber records are the
 * worker's Peer objects, the libsrtp sessions are pylibsrtp's (we call the
 * srtp_protect of the libsrtp that pylibsrtp bundles, through a function
 * pointer its cffi binding gives us, so there is one libsrtp in the process
 * and no second copy of any key). A Leg caches, per subscriber, the session
 * pointer and the packed socket address; it is rebuilt whenever the record's
 * ``protect`` or ``addr`` is a different object from the one it was built for.
 *
 *   Fanout(fd, protect_fn, resolve)   fd: the worker's UDP socket (non-blocking)
 *                                     protect_fn: address of srtp_protect
 *                                     resolve(protect) -> session address or 0
 *   Fanout.send(routed) -> int        routed: [(peer, plain_rtp_bytes)];
 *                                     returns the datagrams the kernel took.
 *
 * A record whose ``protect`` is None is skipped (not keyed yet, or gone). A
 * ``protect`` that is not a pylibsrtp Session's (resolve gives 0) is called
 * from here, and what it returns is sent in the same batch. A failed protect
 * adds one to the record's ``srtp_errors``. A full socket drops the rest of
 * the batch (counted in ``dropped``), as the pure-Python path does when the
 * loop pauses writing: media never queues in user space.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define SLOT 2048      /* one datagram's buffer: an MTU of RTP plus the SRTP trailer */
#define TRAILER 144    /* SRTP_MAX_TRAILER_LEN: tag (16) + MKI (128) */
#define BATCH 64       /* datagrams per sendmmsg */

typedef int (*srtp_protect_fn)(void *ctx, void *rtp_hdr, int *len_ptr);

static PyObject *str_protect, *str_addr, *str_wire, *str_srtp_errors, *one;

/* -- Leg: a subscriber's session pointer and packed address --------------- */

typedef struct {
    PyObject_HEAD
    PyObject *protect; /* what it was built for (keeps the Session alive) */
    PyObject *addr;
    void *srtp;        /* NULL: call protect from here */
    struct sockaddr_storage sa;
    socklen_t salen;
} Leg;

static void Leg_dealloc(Leg *self) {
    Py_XDECREF(self->protect);
    Py_XDECREF(self->addr);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LegType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fanout.Leg",
    .tp_basicsize = sizeof(Leg),
    .tp_dealloc = (destructor)Leg_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A subscriber's libsrtp session and socket address, cached by sfu._fanout.",
};

static int pack_address(PyObject *addr, struct sockaddr_storage *sa, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL) return -1;
    port = (int)PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred()) return -1;
    memset(sa, 0, sizeof(*sa));
    struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof(*v4);
        return 0;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return -1;
}

/* -- Fanout ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int fd;
    srtp_protect_fn protect_fn;
    PyObject *resolve;
    unsigned long long sent, dropped, send_errors;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage addrs[BATCH];
    unsigned char slots[BATCH][SLOT];
} Fanout;

static void Fanout_dealloc(Fanout *self) {
    Py_XDECREF(self->resolve);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Fanout_init(Fanout *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "protect_fn", "resolve", NULL};
    int fd;
    unsigned long long fn;
    PyObject *resolve;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iKO", kwlist, &fd, &fn, &resolve)) return -1;
    if (!PyCallable_Check(resolve)) {
        PyErr_SetString(PyExc_TypeError, "resolve must be callable");
        return -1;
    }
    self->fd = fd;
    self->protect_fn = (srtp_protect_fn)(uintptr_t)fn;
    Py_INCREF(resolve);
    Py_XSETREF(self->resolve, resolve);
    return 0;
}

/* The cached Leg of ``sub`` for ``protect`` and ``addr``, rebuilt if stale. Borrowed. */
static Leg *leg_of(Fanout *self, PyObject *sub, PyObject *protect, PyObject *addr) {
    PyObject *wire = PyObject_GetAttr(sub, str_wire);
    if (wire == NULL) return NULL;
    if (Py_IS_TYPE(wire, &LegType) && ((Leg *)wire)->protect == protect &&
        ((Leg *)wire)->addr == addr) {
        Py_DECREF(wire); /* the record still holds it */
        return (Leg *)wire;
    }
    Py_DECREF(wire);
    Leg *leg = PyObject_New(Leg, &LegType);
    if (leg == NULL) return NULL;
    leg->protect = NULL;
    leg->addr = NULL;
    if (pack_address(addr, &leg->sa, &leg->salen) < 0) goto fail;
    PyObject *ptr = PyObject_CallOneArg(self->resolve, protect);
    if (ptr == NULL) goto fail;
    leg->srtp = PyLong_AsVoidPtr(ptr);
    Py_DECREF(ptr);
    if (PyErr_Occurred()) goto fail;
    Py_INCREF(protect);
    leg->protect = protect;
    Py_INCREF(addr);
    leg->addr = addr;
    if (PyObject_SetAttr(sub, str_wire, (PyObject *)leg) < 0) goto fail;
    Py_DECREF(leg); /* the record holds it now */
    return leg;
fail:
    Py_DECREF(leg);
    return NULL;
}

static void flush(Fanout *self, int n) {
    int off = 0;
    while (off < n) {
        int r = sendmmsg(self->fd, self->msgs + off, (unsigned int)(n - off), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                self->dropped += (unsigned long long)(n - off);
                return;
            }
            /* This one datagram is refused (an ICMP error from an earlier
             * send, a bad address): skip it, keep the rest. */
            self->send_errors++;
            off++;
            continue;
        }
        self->sent += (unsigned long long)r;
        off += r;
    }
}

static int count_error(PyObject *sub) {
    PyObject *v = PyObject_GetAttr(sub, str_srtp_errors);
    if (v == NULL) return -1;
    PyObject *w = PyNumber_Add(v, one);
    Py_DECREF(v);
    if (w == NULL) return -1;
    int r = PyObject_SetAttr(sub, str_srtp_errors, w);
    Py_DECREF(w);
    return r;
}

static PyObject *Fanout_send(Fanout *self, PyObject *routed) {
    if (!PyList_Check(routed)) {
        PyErr_SetString(PyExc_TypeError, "routed must be a list");
        return NULL;
    }
    unsigned long long before = self->sent;
    int n = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(routed); i++) {
        PyObject *item = PyList_GET_ITEM(routed, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "routed items must be (peer, packet)");
            goto fail;
        }
        PyObject *sub = PyTuple_GET_ITEM(item, 0);
        PyObject *packet = PyTuple_GET_ITEM(item, 1);
        PyObject *protect = PyObject_GetAttr(sub, str_protect);
        if (protect == NULL) goto fail;
        if (protect == Py_None) {
            Py_DECREF(protect);
            continue;
        }
        PyObject *addr = PyObject_GetAttr(sub, str_addr);
        if (addr == NULL) {
            Py_DECREF(protect);
            goto fail;
        }
        Leg *leg = addr == Py_None ? NULL : leg_of(self, sub, protect, addr);
        Py_DECREF(addr);
        if (leg == NULL) {
            Py_DECREF(protect);
            if (PyErr_Occurred()) goto fail;
            continue;
        }
        unsigned char *slot = self->slots[n];
        int len;
        if (leg->srtp != NULL) {
            char *data;
            Py_ssize_t size;
            if (PyBytes_AsStringAndSize(packet, &data, &size) < 0) {
                Py_DECREF(protect);
                goto fail;
            }
            if (size > SLOT - TRAILER) {
                Py_DECREF(protect);
                if (count_error(sub) < 0) goto fail;
                continue;
            }
            memcpy(slot, data, (size_t)size);
            len = (int)size;
            if (self->protect_fn(leg->srtp, slot, &len) != 0) {
                Py_DECREF(protect);
                if (count_error(sub) < 0) goto fail;
                continue;
            }
        } else {
            PyObject *out = PyObject_CallOneArg(protect, packet);
            if (out == NULL) {
                /* Its own typed error: count it and go on, as the Python path does. */
                PyErr_Clear();
                Py_DECREF(protect);
                if (count_error(sub) < 0) goto fail;
                continue;
            }
            char *data;
            Py_ssize_t size;
            if (PyBytes_AsStringAndSize(out, &data, &size) < 0 || size > SLOT) {
                Py_DECREF(out);
                Py_DECREF(protect);
                if (PyErr_Occurred()) goto fail;
                continue;
            }
            memcpy(slot, data, (size_t)size);
            len = (int)size;
            Py_DECREF(out);
        }
        Py_DECREF(protect);
        memcpy(&self->addrs[n], &leg->sa, leg->salen);
        self->iov[n].iov_base = slot;
        self->iov[n].iov_len = (size_t)len;
        struct msghdr *h = &self->msgs[n].msg_hdr;
        h->msg_name = &self->addrs[n];
        h->msg_namelen = leg->salen;
        h->msg_iov = &self->iov[n];
        h->msg_iovlen = 1;
        h->msg_control = NULL;
        h->msg_controllen = 0;
        h->msg_flags = 0;
        if (++n == BATCH) {
            flush(self, n);
            n = 0;
        }
    }
    flush(self, n);
    return PyLong_FromUnsignedLongLong(self->sent - before);
fail:
    flush(self, n);
    return NULL;
}

static PyObject *Fanout_counters(Fanout *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsK}", "sent", self->sent, "dropped", self->dropped,
                         "send_errors", self->send_errors);
}

static PyMethodDef Fanout_methods[] = {
    {"send", (PyCFunction)Fanout_send, METH_O,
     "send(routed) -> int: protect each (peer, packet) for its peer and sendmmsg them."},
    {"counters", (PyCFunction)Fanout_counters, METH_NOARGS,
     "counters() -> {'sent', 'dropped', 'send_errors'} since creation."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FanoutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fanout.Fanout",
    .tp_basicsize = sizeof(Fanout),
    .tp_dealloc = (destructor)Fanout_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Fanout(fd, protect_fn, resolve): SRTP-protect and sendmmsg routed packets.",
    .tp_methods = Fanout_methods,
    .tp_init = (initproc)Fanout_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sfu._fanout",
    "The SFU's per-datagram fan-out (SRTP protect and sendmmsg); see sfu/native.py.", -1, NULL,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (PyType_Ready(&LegType) < 0 || PyType_Ready(&FanoutType) < 0) return NULL;
    str_protect = PyUnicode_InternFromString("protect");
    str_addr = PyUnicode_InternFromString("addr");
    str_wire = PyUnicode_InternFromString("wire");
    str_srtp_errors = PyUnicode_InternFromString("srtp_errors");
    one = PyLong_FromLong(1);
    if (!str_protect || !str_addr || !str_wire || !str_srtp_errors || !one) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&FanoutType);
    if (PyModule_AddObject(m, "Fanout", (PyObject *)&FanoutType) < 0) {
        Py_DECREF(&FanoutType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LegType);
    PyModule_AddObject(m, "Leg", (PyObject *)&LegType);
    return m;
}
