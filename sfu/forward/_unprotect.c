/* The receive side's native step: SRTP or SRTCP unprotect of one datagram.
 *
 *   Unprotect(fn, srtp, session, refused)   fn: address of srtp_unprotect (or
 *                                           srtp_unprotect_rtcp) of the libsrtp
 *                                           pylibsrtp bundles
 *                                           srtp: the session's srtp_t
 *                                           session: the pylibsrtp Session that
 *                                           owns it (kept alive here)
 *                                           refused(status) -> the exception for
 *                                           a libsrtp status other than ok
 *   unprotect(packet) -> bytes              the plain packet, or raises
 *
 * What pylibsrtp's Session.unprotect does, without its per-call Python:
 * there, a call copies the datagram into the session's buffer through cffi
 * (releasing and taking the GIL around libsrtp), then copies the result out
 * into a new bytes. Here the datagram is copied once into the bytes that is
 * returned, libsrtp authenticates and decrypts it in place, and the bytes is
 * cut to the plain length (an unprotected packet is never longer). A
 * profile of a worker with one publisher and no subscriber put the wrapper
 * at twice libsrtp's own time (sfu/forward/native.py says more).
 *
 * Refusals (authentication, replay) raise what ``refused`` returns, so the
 * callers catch what they caught from pylibsrtp. A packet shorter than an
 * RTP header raises ValueError before libsrtp sees it; the callers never
 * pass one (the demultiplexer takes 12 octets or more).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#include "_fanout.h"

typedef int (*srtp_unprotect_fn)(void *ctx, void *srtp_hdr, int *len_ptr);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    srtp_unprotect_fn fn;
    void *srtp;
    PyObject *session; /* owns srtp: alive as long as this is */
    PyObject *refused;
} Unprotect;

static void Unprotect_dealloc(Unprotect *self) {
    Py_XDECREF(self->session);
    Py_XDECREF(self->refused);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Unprotect_call(PyObject *callable, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames) {
    Unprotect *self = (Unprotect *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "unprotect takes one packet");
        return NULL;
    }
    PyObject *data = args[0];
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "packet must be bytes");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < 12 || size > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "packet is not an SRTP or SRTCP packet's size");
        return NULL;
    }
    /* A new bytes of its own (never a shared singleton: size >= 12), written
     * only here, before anyone else sees it. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(data), (size_t)size);
    int len = (int)size;
    int status = self->fn(self->srtp, PyBytes_AS_STRING(out), &len);
    if (status != 0) {
        Py_DECREF(out);
        PyObject *exc = PyObject_CallFunction(self->refused, "i", status);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    if (len < 0 || len > size) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "libsrtp returned an impossible length");
        return NULL;
    }
    if (len < size && _PyBytes_Resize(&out, len) < 0) return NULL;
    return out;
}

static PyObject *Unprotect_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fn", "srtp", "session", "refused", NULL};
    unsigned long long fn, srtp;
    PyObject *session, *refused;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKOO", kwlist, &fn, &srtp, &session,
                                     &refused))
        return NULL;
    if (fn == 0 || srtp == 0) {
        PyErr_SetString(PyExc_ValueError, "fn and srtp must be addresses");
        return NULL;
    }
    if (!PyCallable_Check(refused)) {
        PyErr_SetString(PyExc_TypeError, "refused must be callable");
        return NULL;
    }
    Unprotect *self = (Unprotect *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = Unprotect_call;
    self->fn = (srtp_unprotect_fn)(uintptr_t)fn;
    self->srtp = (void *)(uintptr_t)srtp;
    Py_INCREF(session);
    self->session = session;
    Py_INCREF(refused);
    self->refused = refused;
    return (PyObject *)self;
}

static PyMemberDef Unprotect_members[] = {
    {"session", T_OBJECT, offsetof(Unprotect, session), READONLY,
     "The pylibsrtp Session whose libsrtp session this unprotects with."},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject UnprotectType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu.forward._fanout.Unprotect",
    .tp_basicsize = sizeof(Unprotect),
    .tp_dealloc = (destructor)Unprotect_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Unprotect, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_doc = "Unprotect(fn, srtp, session, refused): unprotect(packet) -> bytes, "
              "pylibsrtp's Session.unprotect (or unprotect_rtcp) in one copy.",
    .tp_members = Unprotect_members,
    .tp_new = Unprotect_new,
};
