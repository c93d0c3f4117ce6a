/* The SFU's native fan-out: rewrite, SRTP-protect and sendmmsg a packet's copies.
 *
 * sfu/forward/native.py is its only caller and says why it exists. One type, Fanout,
 * bound to the worker's UDP socket, and two pure functions:
 *
 *   Fanout(fd, protect_fn, resolve)   fd: the worker's UDP socket (non-blocking)
 *                                     protect_fn: address of srtp_protect
 *                                     resolve(protect) -> session address or 0
 *   Fanout.forward(*steady) -> int    the steady-state copies of one packet
 *                                     (its rtc.rtp.view.RtpView) that
 *                                     Forwarder.route_view returned:
 *                                     rewritten, protected, sent; the
 *                                     subscriptions it leaves go to ``rest``
 *   Fanout.send(routed) -> int        routed: [(peer, plain_rtp_bytes)];
 *                                     returns the datagrams the kernel took
 *   red_primary, red_deepen           module functions: RED's two per-packet
 *                                     steps (RFC 2198), pure, twins of
 *                                     rtc/red.py's (in _fanout_red.c)
 *   Unprotect                         the receive side's SRTP unprotect (in
 *                                     _unprotect.c)
 *
 * Everything it touches is owned by Python objects: the subscriptions and
 * their rewriters are the forwarder's (sfu/forward/table.py), the subscriber records
 * are the worker's Peer objects, the libsrtp sessions are pylibsrtp's (we
 * call the srtp_protect of the libsrtp that pylibsrtp bundles, through a
 * function pointer its cffi binding gives us, so there is one libsrtp in the
 * process and no second copy of any key). A Leg caches, per subscriber, the
 * session pointer and the packed socket address; it is rebuilt whenever the
 * record's ``protect`` or ``addr`` is a different object from the one it was
 * built for.
 *
 * What it reads of a packet is its rtc.rtp.view.RtpView, parsed once where
 * the packet arrived. Of a subscription's state, the numbers it moves per
 * copy are flat: the RtpRewriter's ``position`` (an array of int64) and the
 * send-side estimator's rings (arrays of doubles and unsigned ints) are
 * read and written through their buffers. The rest (flags, payload type
 * map, extension table, counters) is still read from the objects' slots
 * (_slots.h).
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
#include <structmember.h>
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "_fanout.h"

#define SLOT 2048      /* one datagram's buffer: an MTU of RTP plus the SRTP trailer */
#define TRAILER 144    /* SRTP_MAX_TRAILER_LEN: tag (16) + MKI (128) */
#define BATCH 64       /* datagrams per sendmmsg */

typedef int (*srtp_protect_fn)(void *ctx, void *rtp_hdr, int *len_ptr);

static PyObject *str_protect, *str_addr, *str_wire, *str_srtp_errors, *one;
/* Subscription, RtpRewriter and SubscriberTransport slots forward() reads and writes. */
static PyObject *str_paused, *str_waiting_keyframe, *str_vp8, *str_pt_map, *str_rewriter,
    *str_resync, *str_position, *str_last_now, *str_ssrc, *str_ext_table, *str_twcc, *str_abs_send_time,
    *str_transport, *str_twcc_seq, *str_sent_at, *str_sizes, *str_key, *str_packets_sent,
    *str_octets_sent;
/* Vp8Rewriter slots (sfu.forward.simulcast): a simulcast layer's PictureID/TL0PICIDX offsets. */
static PyObject *str_pid_offset, *str_tl0_offset, *str_last_pid, *str_last_tl0;
/* ForwarderStats: what forward() adds to once per packet. */
static PyObject *str_red_stripped, *str_forwarded;

#include "_rings.h"
#include "_slots.h"

enum { S_PAUSED, S_WAITING, S_VP8, S_PT_MAP, S_REWRITER, S_SSRC, S_EXT_TABLE, S_TWCC, S_ABS,
       S_TRANSPORT, S_KEY, S_PACKETS, S_OCTETS, S_COUNT };
enum { R_POSITION, R_LAST_NOW, R_COUNT };
/* RtpRewriter.position (rtc/rtp/sequence.py): where its run stands, flat int64s. */
enum { Q_RESYNC, Q_IN_START, Q_IN_MAX, Q_SEQ_OFFSET, Q_TS_OFFSET, Q_OUT_MAX_SEQ, Q_OUT_MAX_TS,
       Q_COUNT };
enum { T_TWCC_SEQ, T_SENT_AT, T_SIZES, T_COUNT };
enum { P_PROTECT, P_ADDR, P_WIRE, P_SRTP_ERRORS, P_COUNT };
enum { V_RESYNC, V_PID_OFFSET, V_TL0_OFFSET, V_LAST_PID, V_LAST_TL0, V_COUNT };
enum { F_RED_STRIPPED, F_FORWARDED, F_COUNT };
enum { W_PACKET, W_START, W_END, W_TWO_BYTE, W_ELEMENTS, W_COUNT };

static PyObject *sub_names[S_COUNT], *rw_names[R_COUNT], *tr_names[T_COUNT], *peer_names[P_COUNT];
static SlotCache sub_cache = {NULL, 0, S_COUNT, sub_names, {0}};
static SlotCache rw_cache = {NULL, 0, R_COUNT, rw_names, {0}};
static SlotCache tr_cache = {NULL, 0, T_COUNT, tr_names, {0}};
static SlotCache peer_cache = {NULL, 0, P_COUNT, peer_names, {0}};
static PyObject *vp_names[V_COUNT];
static SlotCache vp_cache = {NULL, 0, V_COUNT, vp_names, {0}};
/* ForwarderStats: the counters forward() adds to, once per packet. */
static PyObject *stats_names[F_COUNT];
static SlotCache stats_cache = {NULL, 0, F_COUNT, stats_names, {0}};
/* rtc.rtp.view.RtpView: the parsed packet forward() copies, read once per packet. */
static PyObject *view_names[W_COUNT];
static SlotCache view_cache = {NULL, 0, W_COUNT, view_names, {0}};

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
    .tp_name = "sfu.forward._fanout.Leg",
    .tp_basicsize = sizeof(Leg),
    .tp_dealloc = (destructor)Leg_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A subscriber's libsrtp session and socket address, cached by sfu.forward._fanout.",
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
    PyObject *wire = slot_get(&peer_cache, sub, P_WIRE);
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
    if (slot_set(&peer_cache, sub, P_WIRE, (PyObject *)leg) < 0) goto fail;
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


/* Address slot ``n`` (already protected, ``len`` octets) to ``leg``; flushes a full batch. */
static int queue(Fanout *self, int n, Leg *leg, int len) {
    memcpy(&self->addrs[n], &leg->sa, leg->salen);
    self->iov[n].iov_base = self->slots[n];
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
    return n;
}

static int count_error(PyObject *sub) {
    PyObject *v = slot_get(&peer_cache, sub, P_SRTP_ERRORS);
    if (v == NULL) return -1;
    PyObject *w = PyNumber_Add(v, one);
    Py_DECREF(v);
    if (w == NULL) return -1;
    int r = slot_set(&peer_cache, sub, P_SRTP_ERRORS, w);
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
        PyObject *protect = slot_get(&peer_cache, sub, P_PROTECT);
        if (protect == NULL) goto fail;
        if (protect == Py_None) {
            Py_DECREF(protect);
            continue;
        }
        PyObject *addr = slot_get(&peer_cache, sub, P_ADDR);
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
        n = queue(self, n, leg, len);
    }
    flush(self, n);
    return PyLong_FromUnsignedLongLong(self->sent - before);
fail:
    flush(self, n);
    return NULL;
}


/* -- forward: the per-subscriber loop of Forwarder.route_into ----------------- */

#define MAX_ELEMENTS 32

typedef struct {
    int hdr, xid, length;
} Element;

/* sfu.forward.table.remap_extensions on one copy: extension ids per ``table``; 0 blanks to padding (RFC 8285 4.2). */
static void remap(unsigned char *buf, const Element *el, int count, const unsigned char *table,
                  int two_byte) {
    for (int i = 0; i < count; i++) {
        int hdr = el[i].hdr, xid = el[i].xid, length = el[i].length;
        int new_id = table[xid];
        if (new_id == xid) continue;
        if (two_byte) {
            if (new_id) buf[hdr] = (unsigned char)new_id;
            else memset(buf + hdr, 0, (size_t)(2 + length));
        } else {
            if (0 < new_id && new_id < 15) buf[hdr] = (unsigned char)((new_id << 4) | (length - 1));
            else memset(buf + hdr, 0, (size_t)(1 + length));
        }
    }
}

/* The buffer of an RtpRewriter's ``position`` (Q_COUNT int64s), or -1 with an exception. */
static int position_buffer(PyObject *rw, Py_buffer *b) {
    PyObject *position = slot_get(&rw_cache, rw, R_POSITION);
    if (position == NULL) return -1;
    int r = PyObject_GetBuffer(position, b, PyBUF_WRITABLE | PyBUF_FORMAT);
    Py_DECREF(position);
    if (r < 0) return -1;
    if (b->itemsize != 8 || b->len < Q_COUNT * 8 || b->format == NULL ||
        (strcmp(b->format, "q") != 0 && strcmp(b->format, "l") != 0)) {
        PyBuffer_Release(b);
        PyErr_SetString(PyExc_TypeError, "RtpRewriter.position must be int64s");
        return -1;
    }
    return 0;
}

/* Where ``rw``'s run stands, copied out (nothing in the loop runs Python
 * code between this and the advance, but the copy leaves no pointer held). */
static int position_read(PyObject *rw, long long out[Q_COUNT]) {
    Py_buffer b;
    if (position_buffer(rw, &b) < 0) return -1;
    memcpy(out, b.buf, Q_COUNT * sizeof(long long));
    PyBuffer_Release(&b);
    return 0;
}

/* RtpRewriter.rewrite's step past its highest: the new highest in and out. */
static int position_advance(PyObject *rw, long long in_max, long long out_seq, long long out_ts) {
    Py_buffer b;
    if (position_buffer(rw, &b) < 0) return -1;
    long long *p = (long long *)b.buf;
    p[Q_IN_MAX] = in_max;
    p[Q_OUT_MAX_SEQ] = out_seq;
    p[Q_OUT_MAX_TS] = out_ts;
    PyBuffer_Release(&b);
    return 0;
}

/* Vp8Rewriter.apply past a run's first packet: this subscriber's PictureID and
 * TL0PICIDX into ``slot``, remembering the newest sent (RFC 1982 comparison). */
static int vp8_apply(PyObject *vp, const Picture *pic, unsigned char *slot) {
    long long off, last;
    if (pic->pid_pos >= 0) {
        if (slot_ll(&vp_cache, vp, V_PID_OFFSET, &off) < 0 ||
            slot_ll(&vp_cache, vp, V_LAST_PID, &last) < 0)
            return -1;
        long long out = (pic->pid + off) & pic->mask;
        if (out != last && ((out - last) & pic->mask) < ((pic->mask + 1) >> 1) &&
            slot_set_ll(&vp_cache, vp, V_LAST_PID, out) < 0)
            return -1;
        if (pic->mask == 0x7FFF) {
            slot[pic->pid_pos] = (unsigned char)(0x80 | (out >> 8));
            slot[pic->pid_pos + 1] = (unsigned char)(out & 0xFF);
        } else {
            slot[pic->pid_pos] = (unsigned char)out;
        }
    }
    if (pic->tl0_pos >= 0) {
        if (slot_ll(&vp_cache, vp, V_TL0_OFFSET, &off) < 0 ||
            slot_ll(&vp_cache, vp, V_LAST_TL0, &last) < 0)
            return -1;
        long long out = (pic->tl0 + off) & 0xFF;
        if (out != last && ((out - last) & 0xFF) < 0x80 &&
            slot_set_ll(&vp_cache, vp, V_LAST_TL0, out) < 0)
            return -1;
        slot[pic->tl0_pos] = (unsigned char)out;
    }
    return 0;
}

/* Fanout.forward(subs, view, now, rest, tcc_off, abs_off, abs_value, primary, stats,
 *                *held) -> forwarded
 *
 * The loop of Forwarder.route_view over one packet's subscriptions, for the
 * copies that need nothing but the steady state. ``view`` is the packet as
 * rtc.rtp.view.RtpView parsed it once where it arrived (its ``packet``,
 * ``start``, ``end``, ``two_byte`` and ``elements``: nothing is parsed
 * again here). Each copy gets its own slot (a
 * copy of the packet), its payload type, sequence number and timestamp
 * (RtpRewriter.rewrite past a run's first packet), SSRC, extension ids,
 * transport-wide sequence number (recorded in the transport's rings) and
 * abs-send-time, a simulcast layer's PictureID and TL0PICIDX (its VP8
 * rewriter's offsets), is counted on the subscription, protected and queued
 * for its peer (``sub.key``). A subscription waiting for a keyframe, or whose
 * RTP or VP8 rewriter starts a run, is appended to ``rest`` for the Python
 * loop; a paused one is skipped, as there. Returns how many copies it
 * rewrote, sent or not, and adds them to ``stats.forwarded``. Arguments past
 * ``stats`` are the forwarder's (what its own loop over ``rest`` needs) and
 * are not read: Forwarder.route_into returns the whole tuple, and the worker
 * passes it here as it is.
 *
 * ``primary`` (rtc.red.primary of a RED packet, RFC 2198: the primary block's
 * payload type << 16 | its offset; -1 for any other packet): a subscription
 * whose payload type map lacks the packet's payload type but has the
 * primary's gets the RTP header (``start`` octets, extensions included),
 * then the primary block, the P bit cleared; each such copy adds one to
 * ``stats.red_stripped``.
 */
static PyObject *forward_packet(Fanout *self, PyObject *const *args, PyObject *packet,
                                PyObject *elements, int two_byte, long start,
                                long long payload_octets);

static PyObject *Fanout_forward(Fanout *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 9) {
        PyErr_SetString(PyExc_TypeError, "forward takes 9 arguments and more");
        return NULL;
    }
    PyObject *subs = args[0], *view = args[1], *now_obj = args[2], *rest = args[3];
    if (!PyList_Check(subs) || !PyList_Check(rest)) {
        PyErr_SetString(PyExc_TypeError, "forward(list, RtpView, float, list, ...)");
        return NULL;
    }
    (void)now_obj;
    /* The packet as rtc.rtp.view.RtpView parsed it where it arrived; the
     * packet and its element list are held for the call, whatever Python
     * code the loop runs (a protect of another kind, a ring's __setitem__). */
    long long start, end;
    int two_byte = slot_true(&view_cache, view, W_TWO_BYTE);
    if (two_byte < 0 || slot_ll(&view_cache, view, W_START, &start) < 0 ||
        slot_ll(&view_cache, view, W_END, &end) < 0)
        return NULL;
    PyObject *packet = slot_get(&view_cache, view, W_PACKET);
    if (packet == NULL) return NULL;
    PyObject *elements = slot_get(&view_cache, view, W_ELEMENTS);
    if (elements == NULL) {
        Py_DECREF(packet);
        return NULL;
    }
    PyObject *result = NULL;
    if (!PyBytes_Check(packet) || !PyList_Check(elements))
        PyErr_SetString(PyExc_TypeError, "the view's packet is bytes, its elements a list");
    else if (start < 12 || end < start || end > PyBytes_GET_SIZE(packet))
        PyErr_SetString(PyExc_ValueError, "the view's payload is out of its packet");
    else
        result = forward_packet(self, args, packet, elements, two_byte, (long)start, end - start);
    Py_DECREF(packet);
    Py_DECREF(elements);
    return result;
}

/* Fanout.forward past reading the view: ``args`` as it was given. */
static PyObject *forward_packet(Fanout *self, PyObject *const *args, PyObject *packet,
                                PyObject *elements, int two_byte, long start,
                                long long payload_octets) {
    PyObject *subs = args[0], *now_obj = args[2], *rest = args[3];
    long tcc_off = PyLong_AsLong(args[4]), abs_off = PyLong_AsLong(args[5]),
         abs_value = PyLong_AsLong(args[6]), primary = PyLong_AsLong(args[7]);
    PyObject *stats = args[8] == Py_None ? NULL : args[8];
    double now = PyFloat_AsDouble(now_obj); /* a number, stored as given */
    if (PyErr_Occurred()) return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(packet);
    Py_ssize_t size = PyBytes_GET_SIZE(packet);
    Element el[MAX_ELEMENTS];
    int count = 0;
    Py_ssize_t ne = PyList_GET_SIZE(elements);
    if (size < 12 || size > SLOT - TRAILER || ne > MAX_ELEMENTS) {
        /* Larger than a slot, or more elements than any sender uses: all to
         * Python, which counts what it cannot protect. */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(subs); i++)
            if (PyList_Append(rest, PyList_GET_ITEM(subs, i)) < 0) return NULL;
        return PyLong_FromLong(0);
    }
    for (Py_ssize_t i = 0; i < ne; i++) {
        PyObject *t = PyList_GET_ITEM(elements, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "elements are (hdr, id, length)");
            return NULL;
        }
        el[count].hdr = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
        el[count].xid = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
        el[count].length = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 2));
        if (PyErr_Occurred()) return NULL;
        int extent = el[count].hdr + (two_byte ? 2 : 1) + el[count].length;
        if (el[count].hdr < 12 || extent > size || el[count].xid < 0 || el[count].xid > 255) {
            PyErr_SetString(PyExc_ValueError, "extension element out of the packet");
            return NULL;
        }
        count++;
    }
    if ((tcc_off >= 0 && tcc_off + 2 > size) || (abs_off >= 0 && abs_off + 3 > size)) {
        PyErr_SetString(PyExc_ValueError, "extension offset out of the packet");
        return NULL;
    }
    unsigned b1 = data[1];
    unsigned marker = b1 & 0x80, pt = b1 & 0x7F;
    long long seq = (data[2] << 8) | data[3];
    long long ts = ((long long)data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7];
    /* A RED packet's primary block: [prim_off, prim_end) of ``data``. */
    long prim_off = primary & 0xFFFF, prim_end = start + (long)payload_octets;
    if (primary >= 0 && (start < 12 || prim_end > size || prim_off <= start ||
                         prim_off >= prim_end)) {
        PyErr_SetString(PyExc_ValueError, "RED primary block out of the packet");
        return NULL;
    }
    PyObject *size_obj = PyLong_FromSsize_t(size);
    if (size_obj == NULL) return NULL;
    PyObject *pt_obj = PyLong_FromLong((long)pt);
    if (pt_obj == NULL) {
        Py_DECREF(size_obj);
        return NULL;
    }
    PyObject *prim_pt_obj = NULL, *cut_size_obj = NULL;
    long stripped = 0;

    long forwarded = 0;
    int n = 0;
    PyObject *sub = NULL, *rw = NULL, *peer = NULL, *protect = NULL, *transport = NULL,
             *vp = NULL;
    Picture pic = {-1, -1, 0x7F, -1, -1};
    int pic_read = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(subs); i++) {
        sub = PyList_GET_ITEM(subs, i);
        int flag = slot_true(&sub_cache, sub, S_PAUSED);
        if (flag < 0) goto fail;
        if (flag) continue;
        /* A subscriber whose transport is not keyed yet (or is gone) gets no
         * copy, and its subscription stands still: no sequence number spent,
         * no keyframe taken, nothing counted (fan_out's ``sendable``). The
         * peer and its protect are held from here to the send below; every
         * way out of this iteration clears them. */
        peer = slot_get(&sub_cache, sub, S_KEY);
        if (peer == NULL) goto fail;
        protect = slot_get(&peer_cache, peer, P_PROTECT);
        if (protect == NULL) goto fail;
        if (protect == Py_None) {
            Py_CLEAR(protect);
            Py_CLEAR(peer);
            continue;
        }
        flag = slot_true(&sub_cache, sub, S_WAITING);
        if (flag < 0) goto fail;
        vp = slot_get(&sub_cache, sub, S_VP8);
        if (vp == NULL) goto fail;
        int vp8_resync = 0;
        if (vp == Py_None) {
            Py_CLEAR(vp);
        } else {
            vp8_resync = slot_true(&vp_cache, vp, V_RESYNC);
            if (vp8_resync < 0) goto fail;
            if (!pic_read) {
                pic = vp8_picture(data, size);
                pic_read = 1;
            }
        }
        rw = slot_get(&sub_cache, sub, S_REWRITER);
        if (rw == NULL) goto fail;
        long long position[Q_COUNT];
        if (position_read(rw, position) < 0) goto fail;
        if (flag || vp8_resync || position[Q_RESYNC]) {
            Py_CLEAR(rw);
            Py_CLEAR(vp);
            Py_CLEAR(protect);
            Py_CLEAR(peer);
            if (PyList_Append(rest, sub) < 0) goto fail;
            continue;
        }
        /* The payload type map (None: as the publisher's). */
        long out_pt = (long)pt;
        int cut = 0;
        PyObject *pt_map = slot_get(&sub_cache, sub, S_PT_MAP);
        if (pt_map == NULL) goto fail;
        if (pt_map != Py_None) {
            PyObject *mapped = PyDict_Check(pt_map) ? PyDict_GetItemWithError(pt_map, pt_obj)
                                                    : NULL;
            if (mapped == NULL && primary >= 0 && PyDict_Check(pt_map) && !PyErr_Occurred()) {
                /* RED to a subscription without it: its primary block. */
                if (prim_pt_obj == NULL &&
                    (prim_pt_obj = PyLong_FromLong(primary >> 16)) == NULL) {
                    Py_DECREF(pt_map);
                    goto fail;
                }
                mapped = PyDict_GetItemWithError(pt_map, prim_pt_obj);
                cut = mapped != NULL;
            }
            if (mapped == NULL) {
                Py_DECREF(pt_map);
                if (PyErr_Occurred()) goto fail;
                Py_CLEAR(rw);
                Py_CLEAR(vp);
                Py_CLEAR(protect);
                Py_CLEAR(peer);
                continue;
            }
            out_pt = PyLong_AsLong(mapped);
            Py_DECREF(pt_map);
            if (out_pt == -1 && PyErr_Occurred()) goto fail;
        } else {
            Py_DECREF(pt_map);
        }
        /* RtpRewriter.rewrite past a run's first packet. */
        long long in_max = position[Q_IN_MAX];
        long long d = ((seq - in_max + 0x8000) & 0xFFFF) - 0x8000;
        long long u = in_max + d;
        if (u < position[Q_IN_START]) {
            Py_CLEAR(rw);
            Py_CLEAR(vp);
            Py_CLEAR(protect);
            Py_CLEAR(peer);
            continue;
        }
        long long out_seq = (seq + position[Q_SEQ_OFFSET]) & 0xFFFF;
        long long out_ts = (ts + position[Q_TS_OFFSET]) & 0xFFFFFFFFLL;
        if (d > 0) {
            if (position_advance(rw, u, out_seq, out_ts) < 0 ||
                slot_set(&rw_cache, rw, R_LAST_NOW, now_obj) < 0)
                goto fail;
        }
        Py_CLEAR(rw);

        long long ssrc;
        if (slot_ll(&sub_cache, sub, S_SSRC, &ssrc) < 0) goto fail;
        unsigned char *slot = self->slots[n];
        Py_ssize_t out_size = size;
        long long octets = payload_octets;
        PyObject *out_size_obj = size_obj;
        if (cut) {
            memcpy(slot, data, (size_t)start);
            memcpy(slot + start, data + prim_off, (size_t)(prim_end - prim_off));
            slot[0] &= 0xDF; /* the padding stays behind */
            out_size = start + (prim_end - prim_off);
            octets = prim_end - prim_off;
            if (cut_size_obj == NULL && (cut_size_obj = PyLong_FromSsize_t(out_size)) == NULL)
                goto fail;
            out_size_obj = cut_size_obj;
            stripped++;
        } else {
            memcpy(slot, data, (size_t)size);
        }
        slot[1] = (unsigned char)(marker | (unsigned)out_pt);
        put16(slot + 2, (unsigned)out_seq);
        put32(slot + 4, (unsigned long)out_ts);
        put32(slot + 8, (unsigned long)ssrc);
        if (vp != NULL) {
            if (vp8_apply(vp, &pic, slot) < 0) goto fail;
            Py_CLEAR(vp);
        }
        if (count) {
            PyObject *table = slot_get(&sub_cache, sub, S_EXT_TABLE);
            if (table == NULL) goto fail;
            if (table != Py_None) {
                if (!PyBytes_Check(table) || PyBytes_GET_SIZE(table) != 256) {
                    Py_DECREF(table);
                    PyErr_SetString(PyExc_TypeError, "ext_table must be 256 bytes");
                    goto fail;
                }
                remap(slot, el, count, (const unsigned char *)PyBytes_AS_STRING(table), two_byte);
            }
            Py_DECREF(table);
            if (tcc_off >= 0) {
                flag = slot_true(&sub_cache, sub, S_TWCC);
                if (flag < 0) goto fail;
                if (flag) {
                    transport = slot_get(&sub_cache, sub, S_TRANSPORT);
                    if (transport == NULL) goto fail;
                    long long tseq;
                    if (slot_ll(&tr_cache, transport, T_TWCC_SEQ, &tseq) < 0) goto fail;
                    put16(slot + tcc_off, (unsigned)tseq);
                    if (slot_set_ll(&tr_cache, transport, T_TWCC_SEQ, (tseq + 1) & 0xFFFF) < 0) goto fail;
                    PyObject *sent_at = slot_get(&tr_cache, transport, T_SENT_AT);
                    if (sent_at == NULL) goto fail;
                    if (sent_at != Py_None) {
                        /* The rings' length is a power of two (SendSideEstimator.rings). */
                        Py_ssize_t slots = PyObject_Size(sent_at);
                        PyObject *sizes = slots < 1 ? NULL : slot_get(&tr_cache, transport, T_SIZES);
                        long long index = tseq & (long long)(slots - 1);
                        int r = sizes == NULL
                                    ? -1
                                    : ring_store(sent_at, index, now_obj, now, 0);
                        if (r == 0) r = ring_store(sizes, index, out_size_obj, 0.0, out_size);
                        Py_XDECREF(sizes);
                        if (r < 0) {
                            Py_DECREF(sent_at);
                            goto fail;
                        }
                    }
                    Py_DECREF(sent_at);
                    Py_CLEAR(transport);
                }
            }
            if (abs_off >= 0) {
                flag = slot_true(&sub_cache, sub, S_ABS);
                if (flag < 0) goto fail;
                if (flag) {
                    slot[abs_off] = (unsigned char)(abs_value >> 16);
                    slot[abs_off + 1] = (unsigned char)(abs_value >> 8);
                    slot[abs_off + 2] = (unsigned char)abs_value;
                }
            }
        }
        if (slot_add(&sub_cache, sub, S_PACKETS, 1) < 0 ||
            slot_add(&sub_cache, sub, S_OCTETS, octets) < 0)
            goto fail;
        forwarded++;

        /* Protect and queue for the subscriber's peer (held from the top), as send() does. */
        PyObject *addr = slot_get(&peer_cache, peer, P_ADDR);
        if (addr == NULL) goto fail;
        Leg *leg = addr == Py_None ? NULL : leg_of(self, peer, protect, addr);
        Py_DECREF(addr);
        if (leg == NULL) {
            if (PyErr_Occurred()) goto fail;
            Py_CLEAR(protect);
            Py_CLEAR(peer);
            continue;
        }
        int len = (int)out_size;
        if (leg->srtp != NULL) {
            if (self->protect_fn(leg->srtp, slot, &len) != 0) {
                if (count_error(peer) < 0) goto fail;
                Py_CLEAR(protect);
                Py_CLEAR(peer);
                continue;
            }
        } else {
            PyObject *copy = PyBytes_FromStringAndSize((const char *)slot, out_size);
            PyObject *result = copy == NULL ? NULL : PyObject_CallOneArg(protect, copy);
            Py_XDECREF(copy);
            char *out;
            Py_ssize_t out_len;
            if (result == NULL || PyBytes_AsStringAndSize(result, &out, &out_len) < 0 ||
                out_len > SLOT) {
                Py_XDECREF(result);
                PyErr_Clear();
                if (count_error(peer) < 0) goto fail;
                Py_CLEAR(protect);
                Py_CLEAR(peer);
                continue;
            }
            memcpy(slot, out, (size_t)out_len);
            len = (int)out_len;
            Py_DECREF(result);
        }
        Py_CLEAR(protect);
        Py_CLEAR(peer);
        n = queue(self, n, leg, len);
    }
    flush(self, n);
    Py_DECREF(pt_obj);
    Py_DECREF(size_obj);
    Py_XDECREF(prim_pt_obj);
    Py_XDECREF(cut_size_obj);
    if (stripped && stats != NULL && slot_add(&stats_cache, stats, F_RED_STRIPPED, stripped) < 0)
        return NULL;
    if (forwarded && stats != NULL && slot_add(&stats_cache, stats, F_FORWARDED, forwarded) < 0)
        return NULL;
    return PyLong_FromLong(forwarded);
fail:
    Py_XDECREF(rw);
    Py_XDECREF(vp);
    Py_XDECREF(transport);
    Py_XDECREF(protect);
    Py_XDECREF(peer);
    Py_DECREF(pt_obj);
    Py_DECREF(size_obj);
    Py_XDECREF(prim_pt_obj);
    Py_XDECREF(cut_size_obj);
    flush(self, n);
    if ((stripped || forwarded) && stats != NULL) {
        /* Copies already sent are counted, whatever failed after them. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (stripped && slot_add(&stats_cache, stats, F_RED_STRIPPED, stripped) < 0)
            PyErr_Clear();
        if (forwarded && slot_add(&stats_cache, stats, F_FORWARDED, forwarded) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    return NULL;
}

static PyObject *Fanout_counters(Fanout *self, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{sKsKsK}", "sent", self->sent, "dropped", self->dropped,
                         "send_errors", self->send_errors);
}

static PyMethodDef Fanout_methods[] = {
    {"send", (PyCFunction)Fanout_send, METH_O,
     "send(routed) -> int: protect each (peer, packet) for its peer and sendmmsg them."},
    {"forward", (PyCFunction)(void (*)(void))Fanout_forward, METH_FASTCALL,
     "forward(subs, view, now, rest, tcc_off, abs_off, abs_value, primary, stats, *held) -> "
     "int: the steady-state copies of the packet Forwarder.route_view returned, rewritten, "
     "protected and sent."},
    {"counters", (PyCFunction)Fanout_counters, METH_NOARGS,
     "counters() -> {'sent', 'dropped', 'send_errors'} since creation."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FanoutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu.forward._fanout.Fanout",
    .tp_basicsize = sizeof(Fanout),
    .tp_dealloc = (destructor)Fanout_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Fanout(fd, protect_fn, resolve): SRTP-protect and sendmmsg routed packets.",
    .tp_methods = Fanout_methods,
    .tp_init = (initproc)Fanout_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
    {"red_primary", (PyCFunction)(void (*)(void))fanout_red_primary, METH_FASTCALL,
     "red_primary(packet, start, end) -> int: rtc.red.primary."},
    {"red_deepen", (PyCFunction)(void (*)(void))fanout_red_deepen, METH_FASTCALL,
     "red_deepen(previous, prev_start, prev_end, delta, packet, start, end, depth) -> "
     "bytes | None | NotImplemented: rtc.red.deepen for one redundant frame in each at "
     "depth 2, NotImplemented for any other shape."},
    {"receive_stamp", (PyCFunction)fanout_receive_stamp, METH_O,
     "receive_stamp(fd) -> float: the kernel's wall-clock stamp of the datagram last read "
     "on fd (SIOCGSTAMPNS), -1.0 without one."},
    {"parse_view", (PyCFunction)(void (*)(void))fanout_parse_view, METH_FASTCALL,
     "parse_view(view, packet) -> None: rtc.rtp.view.RtpView.parse."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sfu.forward._fanout",
    "The SFU's native fan-out (rewrite, SRTP protect, sendmmsg), RED's two per-packet "
    "steps and the receive side's SRTP unprotect, header parse and kernel stamp; see "
    "sfu/forward/native.py.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (PyType_Ready(&LegType) < 0 || PyType_Ready(&FanoutType) < 0 ||
        PyType_Ready(&UnprotectType) < 0)
        return NULL;
    str_protect = PyUnicode_InternFromString("protect");
    str_addr = PyUnicode_InternFromString("addr");
    str_wire = PyUnicode_InternFromString("wire");
    str_srtp_errors = PyUnicode_InternFromString("srtp_errors");
    one = PyLong_FromLong(1);
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;
    INTERN(str_paused, "paused")
    INTERN(str_waiting_keyframe, "waiting_keyframe")
    INTERN(str_vp8, "vp8")
    INTERN(str_pt_map, "pt_map")
    INTERN(str_rewriter, "rewriter")
    INTERN(str_resync, "_resync")
    INTERN(str_position, "position")
    INTERN(str_last_now, "last_now")
    INTERN(str_ssrc, "ssrc")
    INTERN(str_ext_table, "ext_table")
    INTERN(str_twcc, "twcc")
    INTERN(str_abs_send_time, "abs_send_time")
    INTERN(str_transport, "transport")
    INTERN(str_twcc_seq, "twcc_seq")
    INTERN(str_sent_at, "sent_at")
    INTERN(str_sizes, "sizes")
    INTERN(str_key, "key")
    INTERN(str_packets_sent, "packets_sent")
    INTERN(str_octets_sent, "octets_sent")
    INTERN(str_pid_offset, "_pid_offset")
    INTERN(str_tl0_offset, "_tl0_offset")
    INTERN(str_last_pid, "_last_pid")
    INTERN(str_last_tl0, "_last_tl0")
    INTERN(str_red_stripped, "red_stripped")
    INTERN(str_forwarded, "forwarded")
#undef INTERN
    PyObject *sub_list[S_COUNT] = {str_paused, str_waiting_keyframe, str_vp8, str_pt_map,
                                   str_rewriter, str_ssrc, str_ext_table, str_twcc,
                                   str_abs_send_time, str_transport, str_key, str_packets_sent,
                                   str_octets_sent};
    PyObject *rw_list[R_COUNT] = {str_position, str_last_now};
    PyObject *tr_list[T_COUNT] = {str_twcc_seq, str_sent_at, str_sizes};
    memcpy(sub_names, sub_list, sizeof(sub_list));
    memcpy(rw_names, rw_list, sizeof(rw_list));
    memcpy(tr_names, tr_list, sizeof(tr_list));
    PyObject *vp_list[V_COUNT] = {str_resync, str_pid_offset, str_tl0_offset, str_last_pid,
                                  str_last_tl0};
    memcpy(vp_names, vp_list, sizeof(vp_list));
    view_names[W_PACKET] = PyUnicode_InternFromString("packet");
    view_names[W_START] = PyUnicode_InternFromString("start");
    view_names[W_END] = PyUnicode_InternFromString("end");
    view_names[W_TWO_BYTE] = PyUnicode_InternFromString("two_byte");
    view_names[W_ELEMENTS] = PyUnicode_InternFromString("elements");
    for (int i = 0; i < W_COUNT; i++)
        if (view_names[i] == NULL) return NULL;
    stats_names[F_RED_STRIPPED] = str_red_stripped;
    stats_names[F_FORWARDED] = str_forwarded;
    if (!str_protect || !str_addr || !str_wire || !str_srtp_errors || !one) return NULL;
    peer_names[P_PROTECT] = str_protect;
    peer_names[P_ADDR] = str_addr;
    peer_names[P_WIRE] = str_wire;
    peer_names[P_SRTP_ERRORS] = str_srtp_errors;
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
    Py_INCREF(&UnprotectType);
    PyModule_AddObject(m, "Unprotect", (PyObject *)&UnprotectType);
    return m;
}
