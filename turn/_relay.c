/* The TURN relay's UDP hot loops: ChannelData from clients to peers, and
 * ChannelData or Data indications from peers to clients (RFC 8656 sections
 * 10.3, 12.4, 12.5).
 *
 * turn/aio.py is the only caller and says when these run; this file is the
 * per-datagram loop and nothing else. Every table it reads is owned by the
 * Python objects that own it in the pure-Python path, and the core keeps them
 * filled with exactly the entries that may be relayed:
 *
 *   side.allocations   client address (as socket.recvfrom reports it) -> Allocation
 *   alloc.channels     channel number -> peer address
 *   alloc.peer_channels  peer address (as recvfrom reports it) -> channel number
 *   alloc.permissions  peer IP -> expiry
 *   alloc.data_xpa     peer address -> XOR-PEER-ADDRESS TLV (a cache the core fills)
 *
 * Both functions drain a non-blocking socket with one recvmmsg, relay what
 * they can, and hand back as plain (bytes, address) pairs every datagram that
 * needs the core or a counter: STUN messages, malformed or unroutable
 * ChannelData, peers without a channel whose Data indication TLV is not cached
 * yet, and anything else unusual. Python deals with those exactly as it deals
 * with every datagram when this module is absent, so behaviour is the same;
 * only the common case is here.
 *
 *   client_to_peer(fd, allocations, budget, slow) -> relayed
 *   peer_to_client(relay_fd, client_fd, alloc, budget, slow) -> relayed
 *
 * The adapter registers them as the sockets' reader callbacks themselves, so
 * a wake-up runs no Python unless a datagram needs it: each datagram handed
 * back goes to ``slow(data, address)`` once this call's sends are done (the
 * same per-datagram function the pure-Python loop calls). ``relayed`` counts
 * datagrams handed to the kernel (a full buffer or an ICMP error drops that
 * datagram only, as UDP would, and as the pure-Python path does). The
 * allocation's to_peer_* / from_peer_* counters are updated once per call.
 * Datagrams of allocations with a bandwidth cap (``limited``) are all handed
 * back: the core keeps their budget.
 *
 * Sending: the datagrams of one call that go out of the same socket to the
 * same address, in their order, are handed to the kernel as one UDP GSO
 * message (UDP_SEGMENT, Linux 4.18) when they have one size (the last may be
 * shorter): the IP stack, netfilter and the receiver's wake-up then run once
 * per group rather than once per datagram, and the receiver still gets the
 * same datagrams. Messages for one socket go out with one sendmmsg. If the
 * kernel refuses a GSO message, its datagrams are sent one by one (and GSO is
 * not tried again if the kernel lacks it).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define MAX_DATAGRAM 65536
/* Room before a peer's payload for the largest header we prepend: a Data
 * indication's 20-byte STUN header, an IPv6 XOR-PEER-ADDRESS TLV (24) and the
 * DATA TLV header (4). A ChannelData header (4) uses the end of it. */
#define HEADROOM 48
#define SLOT (HEADROOM + MAX_DATAGRAM + 4)
#define CACHE 1024 /* entries in each address cache (direct-mapped) */

static const unsigned char COOKIE[4] = {0x21, 0x12, 0xA4, 0x42};

#define GSO_MAX_SEGS 64      /* UDP_MAX_SEGMENTS in older kernels */
#define GSO_MAX_BYTES 65000  /* payload of one GSO message, under the IP length limit */

static unsigned char *slots; /* BATCH * SLOT bytes, allocated on first use */
static struct mmsghdr in_msgs[BATCH];
static struct iovec in_iov[BATCH];
static struct sockaddr_storage in_names[BATCH];

/* One datagram to send: from socket fd, to sa, the bytes at buf. */
typedef struct {
    int fd;
    struct sockaddr_storage sa; /* a copy: the address caches may change under us */
    socklen_t salen;
    unsigned char *buf;
    size_t len;
} Out;

static Out outq[BATCH];
static int n_out;
static int gso_off; /* the kernel said it has no UDP GSO */

static PyObject *s_relay, *s_fd, *s_channels, *s_limited, *s_peer_channels, *s_permissions,
    *s_data_xpa, *s_data_txid, *s_client, *s_to_peer_pkts, *s_to_peer_bytes,
    *s_from_peer_pkts, *s_from_peer_bytes;

/* -- address caches ------------------------------------------------------- */

/* Socket address -> the tuple socket.recvfrom would give (a dict key of the
 * tables above). Holding the tuple keeps it equal and alive; a collision
 * just replaces the entry. */
typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
    PyObject *key;
} KeyEntry;

/* Address tuple (by identity, so held) -> packed socket address. */
typedef struct {
    PyObject *tuple;
    struct sockaddr_storage sa;
    socklen_t len;
} SockEntry;

static KeyEntry key_cache[CACHE];
static SockEntry sock_cache[CACHE];

static unsigned hash_bytes(const unsigned char *p, size_t n) {
    unsigned h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static socklen_t addr_len(const struct sockaddr_storage *sa) {
    return sa->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* As CPython's makesockaddr: (host, port) or (host, port, flowinfo, scope_id). */
static PyObject *make_key(const struct sockaddr_storage *sa) {
    char host[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo),
                             a->sin6_scope_id);
    }
    PyErr_SetString(PyExc_OSError, "unexpected address family");
    return NULL;
}

/* A borrowed reference to the key for ``sa`` (valid until the next call). */
static PyObject *key_for(const struct sockaddr_storage *sa) {
    socklen_t len = addr_len(sa);
    const unsigned char *p = (const unsigned char *)sa;
    unsigned h;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        h = hash_bytes((const unsigned char *)&a->sin_addr, 4) ^ a->sin_port;
    } else {
        h = hash_bytes(p, len);
    }
    KeyEntry *e = &key_cache[(h ^ (h >> 16)) % CACHE];
    if (e->key != NULL && e->len == len) {
        if (sa->ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
            const struct sockaddr_in *b = (const struct sockaddr_in *)&e->sa;
            if (b->sin_family == AF_INET && a->sin_port == b->sin_port &&
                a->sin_addr.s_addr == b->sin_addr.s_addr)
                return e->key;
        } else if (memcmp(&e->sa, sa, len) == 0) {
            return e->key;
        }
    }
    PyObject *key = make_key(sa);
    if (key == NULL)
        return NULL;
    Py_XSETREF(e->key, key);
    memcpy(&e->sa, sa, len);
    e->len = len;
    return key;
}

/* Pack an address tuple; 0 on success, -1 (no exception) if it is not a
 * plain numeric address we can pack, so the caller hands the datagram back. */
static int sockaddr_for(PyObject *tuple, const struct sockaddr_storage **out, socklen_t *len) {
    uintptr_t h = (uintptr_t)tuple;
    SockEntry *e = &sock_cache[(h >> 4 ^ h >> 14) % CACHE];
    if (e->tuple == tuple) {
        *out = &e->sa;
        *len = e->len;
        return 0;
    }
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) < 2)
        return -1;
    PyObject *host = PyTuple_GET_ITEM(tuple, 0), *port = PyTuple_GET_ITEM(tuple, 1);
    if (!PyUnicode_Check(host) || !PyLong_Check(port))
        return -1;
    const char *h_str = PyUnicode_AsUTF8(host);
    long p = PyLong_AsLong(port);
    if (h_str == NULL || p < 0 || p > 65535) {
        PyErr_Clear();
        return -1;
    }
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof sa);
    socklen_t sl;
    if (strchr(h_str, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
        if (inet_pton(AF_INET6, h_str, &a->sin6_addr) != 1)
            return -1; /* a scoped name: Python's sendto knows what to do */
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)p);
        if (PyTuple_GET_SIZE(tuple) >= 4) {
            unsigned long flow = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(tuple, 2));
            unsigned long scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(tuple, 3));
            if (PyErr_Occurred()) {
                PyErr_Clear();
                return -1;
            }
            a->sin6_flowinfo = htonl((uint32_t)flow);
            a->sin6_scope_id = (uint32_t)scope;
        }
        sl = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&sa;
        if (inet_pton(AF_INET, h_str, &a->sin_addr) != 1)
            return -1;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)p);
        sl = sizeof *a;
    }
    Py_INCREF(tuple);
    Py_XSETREF(e->tuple, tuple);
    e->sa = sa;
    e->len = sl;
    *out = &e->sa;
    *len = sl;
    return 0;
}

/* -- receiving ------------------------------------------------------------- */

static int ensure_slots(void) {
    if (slots == NULL) {
        slots = PyMem_RawMalloc((size_t)BATCH * SLOT);
        if (slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (int i = 0; i < BATCH; i++) {
            in_iov[i].iov_base = slots + (size_t)i * SLOT + HEADROOM;
            in_iov[i].iov_len = MAX_DATAGRAM;
            memset(&in_msgs[i].msg_hdr, 0, sizeof in_msgs[i].msg_hdr);
            in_msgs[i].msg_hdr.msg_name = &in_names[i];
            in_msgs[i].msg_hdr.msg_iov = &in_iov[i];
            in_msgs[i].msg_hdr.msg_iovlen = 1;
        }
    }
    return 0;
}

/* One recvmmsg into the slots, each datagram HEADROOM bytes in; returns the
 * count, 0 when there is nothing to read, -1 with an exception set. */
static int receive(int fd, int budget) {
    if (budget > BATCH)
        budget = BATCH;
    if (budget < 1)
        budget = 1;
    for (int i = 0; i < budget; i++)
        in_msgs[i].msg_hdr.msg_namelen = sizeof in_names[i]; /* the kernel shortens it */
    /* An ICMP error queued on the socket comes back once as an error, like
     * recvfrom's OSError that the pure-Python loop skips: read on. */
    for (int tries = 0; tries < 4; tries++) {
        int n = recvmmsg(fd, in_msgs, (unsigned)budget, MSG_DONTWAIT, NULL);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EBADF || errno == ENOTSOCK || errno == EFAULT || errno == EINVAL) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    return 0;
}

static inline unsigned char *datagram(int i) { return slots + (size_t)i * SLOT + HEADROOM; }

/* Append (data, address) for Python; 0 or -1 with an exception. */
static int hand_back(PyObject **rest, int i, PyObject *key) {
    if (*rest == NULL && (*rest = PyList_New(0)) == NULL)
        return -1;
    if (key == NULL && (key = key_for(&in_names[i])) == NULL)
        return -1;
    PyObject *data = PyBytes_FromStringAndSize((const char *)datagram(i), in_msgs[i].msg_len);
    if (data == NULL)
        return -1;
    PyObject *pair = PyTuple_Pack(2, data, key);
    Py_DECREF(data);
    if (pair == NULL)
        return -1;
    int r = PyList_Append(*rest, pair);
    Py_DECREF(pair);
    return r;
}

/* obj.name += delta */
static int add_attr(PyObject *obj, PyObject *name, long long delta) {
    if (delta == 0)
        return 0;
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL)
        return -1;
    PyObject *d = PyLong_FromLongLong(delta);
    if (d == NULL) {
        Py_DECREF(old);
        return -1;
    }
    PyObject *sum = PyNumber_Add(old, d);
    Py_DECREF(old);
    Py_DECREF(d);
    if (sum == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return r;
}

/* obj.name as a truth value: 1 or 0, or -1 with an exception. */
static int attr_true(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    int r = PyObject_IsTrue(value);
    Py_DECREF(value);
    return r;
}

/* Hand the leftovers to ``slow(data, address)``, one call each, after this
 * call's datagrams are sent (so nothing here is used while Python runs), and
 * return the count. */
static PyObject *finish(Py_ssize_t relayed, PyObject *rest, PyObject *slow) {
    if (rest != NULL) {
        Py_ssize_t n = PyList_GET_SIZE(rest);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PyList_GET_ITEM(rest, i);
            PyObject *r = PyObject_CallFunctionObjArgs(slow, PyTuple_GET_ITEM(pair, 0),
                                                       PyTuple_GET_ITEM(pair, 1), NULL);
            if (r == NULL) {
                Py_DECREF(rest);
                return NULL;
            }
            Py_DECREF(r);
        }
        Py_DECREF(rest);
    }
    return PyLong_FromSsize_t(relayed);
}

/* Arguments: ints and objects by position (METH_FASTCALL). */
static int int_arg(PyObject *o, int *out) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = (int)v;
    return 0;
}

/* -- sending ---------------------------------------------------------------- */

static void queue_out(int fd, const struct sockaddr_storage *sa, socklen_t salen,
                      unsigned char *buf, size_t len) {
    Out *o = &outq[n_out++];
    o->fd = fd;
    memcpy(&o->sa, sa, salen);
    o->salen = salen;
    o->buf = buf;
    o->len = len;
}

static int same_route(const Out *a, const Out *b) {
    return a->fd == b->fd && a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

static struct mmsghdr msgs[BATCH];
static struct iovec iovs[BATCH];
static int first_of[BATCH], segs_of[BATCH]; /* per message: first datagram, datagrams */
static union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
} gso_cmsg[BATCH];

/* A GSO message the kernel refused: its datagrams one by one. */
static void send_each(int m) {
    if (errno == EIO || errno == ENOPROTOOPT || errno == EOPNOTSUPP)
        gso_off = 1;
    struct msghdr *h = &msgs[m].msg_hdr;
    for (size_t k = 0; k < h->msg_iovlen; k++)
        (void)sendto(outq[first_of[m]].fd, h->msg_iov[k].iov_base, h->msg_iov[k].iov_len,
                     MSG_DONTWAIT, h->msg_name, h->msg_namelen);
}

/* Send the queue (see the top of the file) and empty it. */
static void flush_out(void) {
    int n = n_out, n_msgs = 0, n_iov = 0;
    unsigned char used[BATCH];
    memset(used, 0, (size_t)n);
    /* Group: each datagram not yet taken starts a message; later datagrams of
     * the same route join it, in order, while they have its size (a shorter
     * one joins as the last). A route's datagrams that cannot join start the
     * next message for that route, after this one, so order is kept. */
    for (int i = 0; i < n; i++) {
        if (used[i])
            continue;
        used[i] = 1;
        int m = n_msgs++;
        first_of[m] = i;
        segs_of[m] = 1;
        struct iovec *iov = &iovs[n_iov++];
        iov->iov_base = outq[i].buf;
        iov->iov_len = outq[i].len;
        size_t seg = outq[i].len, total = seg;
        /* An empty datagram cannot be a GSO segment: it would vanish. */
        int open = !gso_off && seg > 0;
        for (int j = i + 1; open && j < n; j++) {
            if (used[j] || !same_route(&outq[i], &outq[j]))
                continue;
            if (outq[j].len > seg || outq[j].len == 0 || segs_of[m] == GSO_MAX_SEGS ||
                total + outq[j].len > GSO_MAX_BYTES)
                break;
            used[j] = 1;
            iov = &iovs[n_iov++];
            iov->iov_base = outq[j].buf;
            iov->iov_len = outq[j].len;
            total += outq[j].len;
            segs_of[m]++;
            if (outq[j].len < seg)
                open = 0;
        }
        struct msghdr *h = &msgs[m].msg_hdr;
        memset(h, 0, sizeof *h);
        h->msg_name = &outq[i].sa;
        h->msg_namelen = outq[i].salen;
        h->msg_iov = iov - (segs_of[m] - 1);
        h->msg_iovlen = (size_t)segs_of[m];
        if (segs_of[m] > 1) {
            h->msg_control = gso_cmsg[m].buf;
            h->msg_controllen = sizeof gso_cmsg[m].buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)seg;
            memcpy(CMSG_DATA(c), &size, sizeof size);
        }
    }
    /* Consecutive messages from one socket: one sendmmsg (one sendto for one
     * datagram). A refused message is skipped, as a failed sendto would be. */
    for (int m = 0; m < n_msgs;) {
        int fd = outq[first_of[m]].fd, end = m + 1;
        while (end < n_msgs && outq[first_of[end]].fd == fd)
            end++;
        if (end - m == 1 && segs_of[m] == 1) {
            struct msghdr *h = &msgs[m].msg_hdr;
            (void)sendto(fd, h->msg_iov[0].iov_base, h->msg_iov[0].iov_len, MSG_DONTWAIT,
                         h->msg_name, h->msg_namelen);
            m = end;
            continue;
        }
        while (m < end) {
            int r = sendmmsg(fd, msgs + m, (unsigned)(end - m), MSG_DONTWAIT);
            if (r > 0) {
                m += r;
                continue;
            }
            if (segs_of[m] > 1 && errno != EAGAIN && errno != EWOULDBLOCK)
                send_each(m);
            m++;
        }
    }
    n_out = 0;
}

/* -- client to peer --------------------------------------------------------- */

/* What one call learns about an allocation the first time it sees it. */
typedef struct {
    PyObject *alloc; /* borrowed: the allocations dict holds it during the call */
    PyObject *channels;
    int fd;          /* -1: hand its packets back (capped, or no relay socket) */
    long long pkts, bytes;
} Seen;

static Seen *seen_for(Seen *seen, int *n_seen, PyObject *alloc) {
    for (int k = 0; k < *n_seen; k++)
        if (seen[k].alloc == alloc)
            return &seen[k];
    Seen *s = &seen[(*n_seen)++];
    s->alloc = alloc;
    s->channels = NULL;
    s->fd = -1;
    s->pkts = s->bytes = 0;
    int capped = attr_true(alloc, s_limited);
    if (capped < 0)
        return NULL;
    if (capped)
        return s;
    PyObject *relay = PyObject_GetAttr(alloc, s_relay);
    if (relay == NULL)
        return NULL;
    PyObject *fd = relay == Py_None ? NULL : PyObject_GetAttr(relay, s_fd);
    Py_DECREF(relay);
    if (fd == NULL) {
        PyErr_Clear();
        return s;
    }
    long v = PyLong_AsLong(fd);
    Py_DECREF(fd);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    s->channels = PyObject_GetAttr(alloc, s_channels);
    if (s->channels == NULL)
        return NULL;
    if (!PyDict_Check(s->channels)) {
        Py_CLEAR(s->channels);
        return s;
    }
    s->fd = (int)v;
    return s;
}

static PyObject *client_to_peer(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int fd, budget;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "client_to_peer(fd, allocations, budget, slow)");
        return NULL;
    }
    PyObject *allocations = args[1], *slow = args[3];
    if (int_arg(args[0], &fd) < 0 || int_arg(args[2], &budget) < 0)
        return NULL;
    if (!PyDict_Check(allocations)) {
        PyErr_SetString(PyExc_TypeError, "allocations must be a dict");
        return NULL;
    }
    if (ensure_slots() < 0)
        return NULL;
    int n = receive(fd, budget);
    if (n < 0)
        return NULL;
    Seen seen[BATCH];
    int n_seen = 0;
    Py_ssize_t relayed = 0;
    PyObject *rest = NULL;
    /* The dicts are only read here, and nothing we call runs Python code that
     * could change them, so borrowed references stay valid for the loop. */
    Py_INCREF(allocations);
    for (int i = 0; i < n; i++) {
        unsigned char *d = datagram(i);
        unsigned len = in_msgs[i].msg_len;
        PyObject *key = NULL;
        if (len < 4 || d[0] < 0x40 || d[0] >= 0x80)
            goto back; /* STUN, or garbage the caller counts */
        unsigned plen = (unsigned)d[2] << 8 | d[3];
        if (plen + 4 > len)
            goto back;
        if ((key = key_for(&in_names[i])) == NULL)
            goto error;
        PyObject *alloc = PyDict_GetItemWithError(allocations, key);
        if (alloc == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto back;
        }
        Seen *s = seen_for(seen, &n_seen, alloc);
        if (s == NULL)
            goto error;
        if (s->fd < 0)
            goto back;
        PyObject *number = PyLong_FromLong((long)d[0] << 8 | d[1]);
        if (number == NULL)
            goto error;
        PyObject *peer = PyDict_GetItemWithError(s->channels, number);
        Py_DECREF(number);
        if (peer == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto back;
        }
        const struct sockaddr_storage *sa;
        socklen_t salen;
        if (sockaddr_for(peer, &sa, &salen) < 0)
            goto back;
        queue_out(s->fd, sa, salen, d + 4, plen);
        s->pkts++;
        s->bytes += plen;
        relayed++;
        continue;
    back:
        if (hand_back(&rest, i, key) < 0)
            goto error;
    }
    flush_out();
    for (int k = 0; k < n_seen; k++) {
        Seen *s = &seen[k];
        if (add_attr(s->alloc, s_to_peer_pkts, s->pkts) < 0 ||
            add_attr(s->alloc, s_to_peer_bytes, s->bytes) < 0)
            goto error;
        Py_CLEAR(s->channels);
    }
    Py_DECREF(allocations);
    return finish(relayed, rest, slow);
error:
    flush_out();
    for (int k = 0; k < n_seen; k++)
        Py_CLEAR(seen[k].channels);
    Py_DECREF(allocations);
    Py_XDECREF(rest);
    return NULL;
}

/* -- peer to client --------------------------------------------------------- */

static PyObject *peer_to_client(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    int relay_fd, client_fd, budget;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "peer_to_client(relay_fd, client_fd, alloc, budget, slow)");
        return NULL;
    }
    PyObject *alloc = args[2], *slow = args[4];
    if (int_arg(args[0], &relay_fd) < 0 || int_arg(args[1], &client_fd) < 0 ||
        int_arg(args[3], &budget) < 0)
        return NULL;
    if (ensure_slots() < 0)
        return NULL;
    PyObject *peer_channels = NULL, *permissions = NULL, *xpa_cache = NULL, *txid = NULL,
             *client = NULL, *rest = NULL;
    Py_ssize_t relayed = 0;
    long long bytes = 0;
    int out = 0;
    int n = receive(relay_fd, budget);
    if (n <= 0)
        return n < 0 ? NULL : PyLong_FromLong(0);
    int capped = attr_true(alloc, s_limited);
    if (capped < 0)
        goto error;
    if ((peer_channels = PyObject_GetAttr(alloc, s_peer_channels)) == NULL ||
        (client = PyObject_GetAttr(alloc, s_client)) == NULL)
        goto error;
    const struct sockaddr_storage *client_sa = NULL;
    socklen_t client_len = 0;
    /* A capped allocation's datagrams are all the caller's (its budget). */
    int can_send = !capped && PyDict_Check(peer_channels) &&
                   sockaddr_for(client, &client_sa, &client_len) == 0;
    for (int i = 0; i < n; i++) {
        unsigned char *d = datagram(i);
        unsigned len = in_msgs[i].msg_len;
        PyObject *key = key_for(&in_names[i]);
        if (key == NULL)
            goto error;
        if (!can_send || len > 0xFFFF - 48)
            goto back;
        unsigned char *head;
        size_t total;
        PyObject *number = PyDict_GetItemWithError(peer_channels, key);
        if (number != NULL) {
            /* ChannelData (RFC 8656 section 12.4); no padding over UDP. */
            long ch = PyLong_AsLong(number);
            if (ch < 0x4000 || ch > 0x7FFF) {
                PyErr_Clear();
                goto back;
            }
            head = d - 4;
            head[0] = (unsigned char)(ch >> 8);
            head[1] = (unsigned char)ch;
            head[2] = (unsigned char)(len >> 8);
            head[3] = (unsigned char)len;
            total = len + 4;
        } else {
            if (PyErr_Occurred())
                goto error;
            /* A Data indication (RFC 8656 section 10.3) when the peer has a
             * permission and the core has cached its XOR-PEER-ADDRESS TLV. */
            if (permissions == NULL) {
                if ((permissions = PyObject_GetAttr(alloc, s_permissions)) == NULL ||
                    (xpa_cache = PyObject_GetAttr(alloc, s_data_xpa)) == NULL ||
                    (txid = PyObject_GetAttr(alloc, s_data_txid)) == NULL)
                    goto error;
            }
            if (!PyDict_Check(permissions) || !PyDict_Check(xpa_cache) || !PyBytes_Check(txid) ||
                PyBytes_GET_SIZE(txid) != 12)
                goto back;
            int permitted = PyDict_Contains(permissions, PyTuple_GET_ITEM(key, 0));
            if (permitted < 0)
                goto error;
            if (!permitted)
                goto back; /* counted by the caller */
            PyObject *xpa = PyDict_GetItemWithError(xpa_cache, key);
            if (xpa == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto back; /* the core encodes it once and caches it */
            }
            if (!PyBytes_Check(xpa) || PyBytes_GET_SIZE(xpa) > 24)
                goto back;
            size_t xlen = (size_t)PyBytes_GET_SIZE(xpa);
            size_t pad = (4 - (len & 3)) & 3;
            size_t body = xlen + 4 + len + pad;
            head = d - 4 - xlen - 20;
            head[0] = 0x00;
            head[1] = 0x17; /* Data indication */
            head[2] = (unsigned char)(body >> 8);
            head[3] = (unsigned char)body;
            memcpy(head + 4, COOKIE, 4);
            memcpy(head + 8, PyBytes_AS_STRING(txid), 12);
            memcpy(head + 20, PyBytes_AS_STRING(xpa), xlen);
            unsigned char *tlv = d - 4;
            tlv[0] = 0x00;
            tlv[1] = 0x13; /* DATA */
            tlv[2] = (unsigned char)(len >> 8);
            tlv[3] = (unsigned char)len;
            memset(d + len, 0, pad);
            total = 20 + body;
        }
        queue_out(client_fd, client_sa, client_len, head, total);
        out++;
        bytes += len;
        continue;
    back:
        if (hand_back(&rest, i, key) < 0)
            goto error;
    }
    flush_out();
    relayed = out;
    if (add_attr(alloc, s_from_peer_pkts, out) < 0 || add_attr(alloc, s_from_peer_bytes, bytes) < 0)
        goto error;
    Py_DECREF(peer_channels);
    Py_DECREF(client);
    Py_XDECREF(permissions);
    Py_XDECREF(xpa_cache);
    Py_XDECREF(txid);
    return finish(relayed, rest, slow);
error:
    flush_out();
    Py_XDECREF(peer_channels);
    Py_XDECREF(client);
    Py_XDECREF(permissions);
    Py_XDECREF(xpa_cache);
    Py_XDECREF(txid);
    Py_XDECREF(rest);
    return NULL;
}

/* -- module ----------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"client_to_peer", (PyCFunction)(void (*)(void))client_to_peer, METH_FASTCALL,
     "client_to_peer(fd, allocations, budget, slow) -> relayed\n\n"
     "Drain a client-facing UDP socket: relay ChannelData to bound peers and "
     "call slow(data, address) for every other datagram."},
    {"peer_to_client", (PyCFunction)(void (*)(void))peer_to_client, METH_FASTCALL,
     "peer_to_client(relay_fd, client_fd, alloc, budget, slow) -> relayed\n\n"
     "Drain a relay socket: send ChannelData (bound peers) or Data indications "
     "(permitted peers with a cached XOR-PEER-ADDRESS) to the allocation's client "
     "and call slow(data, peer) for every other datagram."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "turn._relay",
    "The TURN relay's UDP hot loops (ChannelData and Data indications); see turn/aio.py.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__relay(void) {
#define INTERN(var, text)                                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                          \
        return NULL;
    INTERN(s_relay, "relay");
    INTERN(s_fd, "fd");
    INTERN(s_channels, "channels");
    INTERN(s_limited, "limited");
    INTERN(s_peer_channels, "peer_channels");
    INTERN(s_permissions, "permissions");
    INTERN(s_data_xpa, "data_xpa");
    INTERN(s_data_txid, "data_txid");
    INTERN(s_client, "client");
    INTERN(s_to_peer_pkts, "to_peer_pkts");
    INTERN(s_to_peer_bytes, "to_peer_bytes");
    INTERN(s_from_peer_pkts, "from_peer_pkts");
    INTERN(s_from_peer_bytes, "from_peer_bytes");
#undef INTERN
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
