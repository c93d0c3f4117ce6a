/* What the parts of the sfu.forward._fanout extension share: big-endian stores,
 * the VP8 payload descriptor read in place (inline: it runs per forwarded
 * VP8 packet), the RED module functions of sfu/forward/_fanout_red.c, the
 * header parse of sfu/forward/_view.c, the receive stamp of
 * sfu/forward/_stamp.c and the unprotect of sfu/forward/_unprotect.c. */
#ifndef WADUD_FANOUT_H
#define WADUD_FANOUT_H

#include <Python.h>

static inline void put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void put32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* The VP8 payload descriptor's PictureID and TL0PICIDX (RFC 7741 section 4.2), as
 * sfu.forward.simulcast.vp8_picture reads them: offsets -1 for a field that is absent. */
typedef struct {
    long pid_pos, pid, mask, tl0_pos, tl0;
} Picture;

static inline Picture vp8_picture(const unsigned char *d, Py_ssize_t size) {
    Picture pic = {-1, -1, 0x7F, -1, -1};
    Py_ssize_t start = 12 + (d[0] & 0x0F) * 4, end = size;
    if (d[0] & 0x10) {
        if (size < start + 4) return pic;
        start += 4 + ((d[start + 2] << 8) | d[start + 3]) * 4;
    }
    if (d[0] & 0x20) {
        unsigned pad = d[size - 1];
        if (pad == 0 || start + (Py_ssize_t)pad > size) return pic;
        end -= pad;
    }
    if (start + 1 >= end || !(d[start] & 0x80)) return pic;
    unsigned x = d[start + 1];
    Py_ssize_t pos = start + 2;
    Picture out = {-1, -1, 0x7F, -1, -1};
    if (x & 0x80) {
        if (pos >= end) return pic;
        out.pid_pos = (long)pos;
        out.pid = d[pos] & 0x7F;
        if (d[pos] & 0x80) {
            if (pos + 1 >= end) return pic;
            out.mask = 0x7FFF;
            out.pid = (out.pid << 8) | d[pos + 1];
            pos += 2;
        } else {
            pos += 1;
        }
    }
    if (x & 0x40) {
        if (pos >= end) return pic;
        out.tl0_pos = (long)pos;
        out.tl0 = d[pos];
    }
    return out;
}

/* rtc.red.primary and rtc.red.deepen's fast path (RFC 2198); _fanout_red.c. */
PyObject *fanout_red_primary(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *fanout_red_deepen(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* The kernel's receive stamp of the datagram last read on a socket; _stamp.c. */
PyObject *fanout_receive_stamp(PyObject *module, PyObject *arg);

/* rtc.rtp.view.RtpView.parse in native code; _view.c. */
PyObject *fanout_parse_view(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* The receive side's SRTP and SRTCP unprotect; _unprotect.c. */
extern PyTypeObject UnprotectType;

#endif
