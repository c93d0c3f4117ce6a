/* The receive side's header parse: rtc.rtp.view.RtpView.parse in native code.
 *
 *   parse_view(view, packet)   fills the RtpView ``view`` from ``packet``
 *                              (bytes), or raises rtc.errors.RtpParseError
 *
 * The same reads, in the same order, with the same refusals and messages as
 * RtpView.parse (RFC 3550 5.1, 5.3.1; RFC 8285 4): the fixed header's fields
 * first (so after a refusal they say what the packet claimed), then the
 * CSRCs, the extension block and its elements (one-byte or two-byte form; an
 * unknown profile's body is opaque), the padding. The view stays the Python
 * object the forwarder, the statistics and the fan-out read; its __slots__
 * are written straight (_slots.h), as Python's slot stores would. A profile
 * of a worker with one publisher and no subscriber put the Python parse at a
 * fifth of the packet's Python time (tests/sfu/forward/test_native.py and
 * the fanout fuzz target hold the two to the same answers).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_fanout.h"
#include "_slots.h"

enum {
    V_PACKET,
    V_SIZE,
    V_B0,
    V_B1,
    V_PT,
    V_SEQ,
    V_TS,
    V_SSRC,
    V_START,
    V_END,
    V_EXT_START,
    V_EXT_END,
    V_TWO_BYTE,
    V_ELEMENTS,
    V_COUNT
};

static const char *const names_text[V_COUNT] = {
    "packet", "size", "b0",  "b1",      "payload_type", "seq",      "timestamp",
    "ssrc",   "start", "end", "ext_start", "ext_end",   "two_byte", "elements",
};
static PyObject *names[V_COUNT];
static SlotCache cache = {NULL, 0, V_COUNT, names, {0}};
static PyObject *parse_error; /* rtc.errors.RtpParseError */
static PyObject *no_elements; /* the one empty list of a packet without a block */

static int ready(void) {
    if (parse_error != NULL) return 0;
    for (int i = 0; i < V_COUNT; i++)
        if (names[i] == NULL && (names[i] = PyUnicode_InternFromString(names_text[i])) == NULL)
            return -1;
    if (no_elements == NULL && (no_elements = PyList_New(0)) == NULL) return -1;
    PyObject *errors = PyImport_ImportModule("rtc.errors");
    if (errors == NULL) return -1;
    parse_error = PyObject_GetAttrString(errors, "RtpParseError");
    Py_DECREF(errors);
    return parse_error == NULL ? -1 : 0;
}

static PyObject *refuse(const char *why) {
    PyErr_SetString(parse_error, why);
    return NULL;
}

/* view.<names[i]> = a new int of ``value``. */
static int set_int(PyObject *view, int i, unsigned long value) {
    PyObject *v = PyLong_FromUnsignedLong(value);
    if (v == NULL) return -1;
    int r = slot_set(&cache, view, i, v);
    Py_DECREF(v);
    return r;
}

/* The elements of the block body d[pos:end] (rtc.rtp.extensions._walk_elements):
 * a new list, Py_None (borrowed) for an unknown profile (opaque: *two_byte
 * untouched), or NULL with an exception for an element that overruns the block. */
static PyObject *walk(const unsigned char *d, Py_ssize_t pos, Py_ssize_t end, unsigned profile,
                      int *two_byte) {
    int two = (profile & 0xFFF0) == 0x1000;
    if (profile != 0xBEDE && !two) return Py_None; /* borrowed marker: opaque */
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    while (pos < end) {
        unsigned xid = d[pos];
        Py_ssize_t length, header;
        if (xid == 0) {
            pos += 1;
            continue;
        }
        if (!two) {
            xid >>= 4;
            if (xid == 15) break;
            length = (d[pos] & 0x0F) + 1;
            header = 1;
            if (pos + 1 + length > end) {
                Py_DECREF(list);
                return refuse("RTP one-byte extension element overruns its block");
            }
        } else {
            if (pos + 2 > end) {
                Py_DECREF(list);
                return refuse("RTP two-byte extension element header is truncated");
            }
            length = d[pos + 1];
            header = 2;
            if (pos + 2 + length > end) {
                Py_DECREF(list);
                return refuse("RTP two-byte extension element overruns its block");
            }
        }
        PyObject *t = Py_BuildValue("(nIn)", pos, xid, length);
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(t);
        pos += header + length;
    }
    *two_byte = two;
    return list;
}

PyObject *fanout_parse_view(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "parse_view(view, packet: bytes)");
        return NULL;
    }
    if (ready() < 0) return NULL;
    PyObject *view = args[0], *packet = args[1];
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(packet);
    Py_ssize_t n = PyBytes_GET_SIZE(packet);
    if (n < 12) return refuse("RTP packet shorter than the fixed header");
    unsigned b0 = d[0], b1 = d[1];
    if (slot_set(&cache, view, V_PACKET, packet) < 0 || set_int(view, V_SIZE, (unsigned long)n) < 0 ||
        set_int(view, V_B0, b0) < 0 || set_int(view, V_B1, b1) < 0 ||
        set_int(view, V_PT, b1 & 0x7F) < 0 || set_int(view, V_SEQ, (unsigned)d[2] << 8 | d[3]) < 0 ||
        set_int(view, V_TS,
                (unsigned long)d[4] << 24 | (unsigned long)d[5] << 16 | (unsigned long)d[6] << 8 | d[7]) < 0 ||
        set_int(view, V_SSRC,
                (unsigned long)d[8] << 24 | (unsigned long)d[9] << 16 | (unsigned long)d[10] << 8 | d[11]) < 0)
        return NULL;
    if ((b0 & 0xC0) != 0x80) return refuse("RTP version is not 2");
    Py_ssize_t pos = 12 + (Py_ssize_t)(b0 & 0x0F) * 4;
    if (b0 & 0x10) {
        if (n < pos + 4) return refuse("RTP header extension is truncated");
        unsigned profile = (unsigned)d[pos] << 8 | d[pos + 1];
        Py_ssize_t body = pos + 4;
        pos = body + ((Py_ssize_t)d[pos + 2] << 8 | d[pos + 3]) * 4;
        if (n < pos) return refuse("RTP header extension is truncated");
        int two_byte = 0;
        PyObject *elements = walk(d, body, pos, profile, &two_byte);
        if (elements == NULL) return NULL;
        Py_ssize_t ext_start = body, ext_end = pos;
        if (elements == Py_None) {
            Py_INCREF(no_elements);
            elements = no_elements;
            ext_start = ext_end = 0;
        }
        int r = slot_set(&cache, view, V_TWO_BYTE, two_byte ? Py_True : Py_False) < 0 ||
                set_int(view, V_EXT_START, (unsigned long)ext_start) < 0 ||
                set_int(view, V_EXT_END, (unsigned long)ext_end) < 0 ||
                slot_set(&cache, view, V_ELEMENTS, elements) < 0;
        Py_DECREF(elements);
        if (r) return NULL;
    } else {
        if (n < pos) return refuse("RTP header is truncated");
        if (slot_set(&cache, view, V_TWO_BYTE, Py_False) < 0 ||
            set_int(view, V_EXT_START, 0) < 0 || set_int(view, V_EXT_END, 0) < 0 ||
            slot_set(&cache, view, V_ELEMENTS, no_elements) < 0)
            return NULL;
    }
    Py_ssize_t end = n;
    if (b0 & 0x20) {
        unsigned pad = d[n - 1];
        if (pad == 0 || pos + (Py_ssize_t)pad > n) return refuse("RTP padding length is invalid");
        end -= pad;
    }
    if (set_int(view, V_START, (unsigned long)pos) < 0 || set_int(view, V_END, (unsigned long)end) < 0)
        return NULL;
    Py_RETURN_NONE;
}
