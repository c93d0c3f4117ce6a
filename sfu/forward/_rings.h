/* A send-side estimator's rings, stored into from C (sfu/forward/_fanout.c). */
#ifndef WADUD_RINGS_H
#define WADUD_RINGS_H

#include <Python.h>
#include <limits.h>
#include <string.h>

/* ring[index] = value for a send-side estimator's ring (SendSideEstimator.rings):
 * straight into the buffer of an array of doubles ('d', ``dvalue``) or of
 * unsigned ints ('I', ``ivalue``), as its rings are, with no int object
 * for the index; any other sequence through __setitem__ with ``value``. */
static int ring_store(PyObject *ring, long long index, PyObject *value, double dvalue,
                      long long ivalue) {
    if (PyObject_CheckBuffer(ring)) {
        Py_buffer b;
        if (PyObject_GetBuffer(ring, &b, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
            PyErr_Clear();
        } else {
            int done = 0;
            if (b.format != NULL && b.itemsize > 0 && index >= 0 && index < b.len / b.itemsize) {
                if (strcmp(b.format, "d") == 0 && b.itemsize == sizeof(double)) {
                    ((double *)b.buf)[index] = dvalue;
                    done = 1;
                } else if (strcmp(b.format, "I") == 0 && b.itemsize == sizeof(unsigned int) &&
                           ivalue >= 0 && ivalue <= (long long)UINT_MAX) {
                    ((unsigned int *)b.buf)[index] = (unsigned int)ivalue;
                    done = 1;
                }
            }
            PyBuffer_Release(&b);
            if (done) return 0;
        }
    }
    PyObject *i = PyLong_FromLongLong(index);
    if (i == NULL) return -1;
    int r = PyObject_SetItem(ring, i, value);
    Py_DECREF(i);
    return r;
}

#endif
