/* RED (RFC 2198) for the sfu.forward._fanout extension: rtc.red.primary and the fast
 * path of rtc.red.deepen, pure functions on bytes with the same results as
 * their Python twins (tests/sfu/test_red.py holds them to it). sfu/forward/forwarder.py
 * calls them per RED packet when the native leaf is loaded. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_fanout.h"

/* rtc.red.primary: pt << 16 | offset of the primary block's data, or -1. */
static long red_primary(const unsigned char *d, Py_ssize_t start, Py_ssize_t end) {
    Py_ssize_t pos = start;
    long total = 0;
    while (pos < end) {
        unsigned b = d[pos];
        if (!(b & 0x80)) {
            Py_ssize_t offset = pos + 1 + total;
            return offset >= end ? -1 : (long)(b << 16) | (long)offset;
        }
        if (pos + 4 > end) return -1;
        total += ((d[pos + 2] & 0x03) << 8) | d[pos + 3];
        pos += 4;
    }
    return -1;
}

static int red_span(PyObject *packet, Py_ssize_t start, Py_ssize_t end, const unsigned char **d) {
    if (!PyBytes_Check(packet)) {
        PyErr_SetString(PyExc_TypeError, "RED packets are bytes");
        return -1;
    }
    if (start < 0 || end > PyBytes_GET_SIZE(packet) || start > end) {
        PyErr_SetString(PyExc_ValueError, "RED payload out of the packet");
        return -1;
    }
    *d = (const unsigned char *)PyBytes_AS_STRING(packet);
    return 0;
}

PyObject *fanout_red_primary(PyObject *Py_UNUSED(module), PyObject *const *args,
                                    Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "red_primary(packet, start, end)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), end = PyLong_AsSsize_t(args[2]);
    const unsigned char *d;
    if (PyErr_Occurred() || red_span(args[0], start, end, &d) < 0) return NULL;
    return PyLong_FromLong(red_primary(d, start, end));
}

/* rtc.red.deepen for its fast path (one redundant frame in each packet, depth
 * 2: what Chromium sends); anything else goes to the Python twin (None here
 * means only "not this shape"), so ``deepen_fast`` answers NotImplemented. */
PyObject *fanout_red_deepen(PyObject *Py_UNUSED(module), PyObject *const *args,
                                   Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "red_deepen(previous, prev_start, prev_end, delta, packet, start, end, depth)");
        return NULL;
    }
    Py_ssize_t ps = PyLong_AsSsize_t(args[1]), pe = PyLong_AsSsize_t(args[2]);
    long long delta = PyLong_AsLongLong(args[3]);
    Py_ssize_t start = PyLong_AsSsize_t(args[5]), end = PyLong_AsSsize_t(args[6]);
    long depth = PyLong_AsLong(args[7]);
    const unsigned char *p, *c;
    if (PyErr_Occurred() || red_span(args[0], ps, pe, &p) < 0 ||
        red_span(args[4], start, end, &c) < 0)
        return NULL;
    if (depth < 1 || delta <= 0 || delta > 0x3FFF) Py_RETURN_NONE;
    if (depth != 2 || pe - ps < 5 || end - start < 5 || !(p[ps] & c[start] & 0x80) ||
        ((p[ps + 4] | c[start + 4]) & 0x80))
        Py_RETURN_NOTIMPLEMENTED;
    unsigned long word = ((unsigned long)p[ps] << 24) | ((unsigned long)p[ps + 1] << 16) |
                         ((unsigned long)p[ps + 2] << 8) | p[ps + 3];
    long long offset = (long long)((word >> 10) & 0x3FFF) + delta;
    Py_ssize_t at = ps + 5 + (Py_ssize_t)(word & 0x3FF);
    Py_ssize_t length = pe - at;
    Py_ssize_t own = ((c[start + 2] & 0x03) << 8) | c[start + 3];
    Py_ssize_t tail = start + 5 + own;
    if (offset > 0x3FFF || length > 0x3FF || length < 0 || tail > end) Py_RETURN_NONE;
    Py_ssize_t size = start + 9 + (pe - (ps + 5)) + (end - tail);
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(o, c, (size_t)start);
    o[0] &= 0xDF; /* the padding stays behind */
    unsigned long first = (word & 0xFF0003FFUL) | ((unsigned long)offset << 10);
    unsigned long second = 0x80000000UL | ((unsigned long)(p[ps + 4] & 0x7F) << 24) |
                           ((unsigned long)delta << 10) | (unsigned long)length;
    put32(o + start, first);
    put32(o + start + 4, second);
    o[start + 8] = c[start + 4];
    memcpy(o + start + 9, p + ps + 5, (size_t)(pe - (ps + 5)));
    memcpy(o + start + 9 + (pe - (ps + 5)), c + tail, (size_t)(end - tail));
    return out;
}

