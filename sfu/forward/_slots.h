/* Reading and writing the __slots__ of the Python objects sfu/forward/_fanout.c
 * is handed, by offsets resolved once per type (see SlotCache). */
#ifndef WADUD_SLOTS_H
#define WADUD_SLOTS_H

#include <Python.h>
#include <structmember.h>

/* -- slots read straight from the objects ---------------------------------------
 *
 * Subscription, RtpRewriter, SubscriberTransport and Peer keep their state in
 * __slots__; PyObject_GetAttr on a slot costs a type lookup and a descriptor
 * call, several dozen times per copy. A SlotCache resolves, once per type,
 * each name to its member descriptor's offset (only T_OBJECT_EX members, the
 * kind __slots__ makes) and reads and writes the object's slot directly. An
 * object of another type re-resolves; a name that is not such a slot (a
 * property, a subclass's override) makes the cache generic, back to
 * PyObject_GetAttr / PyObject_SetAttr. An unset slot goes the generic way too,
 * which raises AttributeError as Python would.
 */
#define MAX_SLOTS 16

typedef struct {
    PyTypeObject *type; /* strong reference */
    int generic;
    int count;
    PyObject **names;
    Py_ssize_t off[MAX_SLOTS];
} SlotCache;

static void cache_resolve(SlotCache *c, PyTypeObject *type) {
    Py_INCREF(type);
    Py_XSETREF(c->type, type);
    c->generic = 0;
    for (int i = 0; i < c->count; i++) {
        PyObject *d = _PyType_Lookup(type, c->names[i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            c->generic = 1;
            return;
        }
        c->off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
}

static inline int cache_fast(SlotCache *c, PyObject *obj) {
    if (Py_TYPE(obj) != c->type) cache_resolve(c, Py_TYPE(obj));
    return !c->generic;
}

/* New reference to obj.<names[i]>, or NULL with an exception. */
static inline PyObject *slot_get(SlotCache *c, PyObject *obj, int i) {
    if (cache_fast(c, obj)) {
        PyObject *v = *(PyObject **)((char *)obj + c->off[i]);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(obj, c->names[i]);
}

/* obj.<names[i]> = v (v borrowed). */
static inline int slot_set(SlotCache *c, PyObject *obj, int i, PyObject *v) {
    if (cache_fast(c, obj)) {
        PyObject **p = (PyObject **)((char *)obj + c->off[i]);
        Py_INCREF(v);
        Py_XSETREF(*p, v);
        return 0;
    }
    return PyObject_SetAttr(obj, c->names[i], v);
}

static inline int slot_ll(SlotCache *c, PyObject *obj, int i, long long *out) {
    PyObject *v = slot_get(c, obj, i);
    if (v == NULL) return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static inline int slot_set_ll(SlotCache *c, PyObject *obj, int i, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int r = slot_set(c, obj, i, v);
    Py_DECREF(v);
    return r;
}

/* Truth of obj.<names[i]>: 1, 0, or -1 with an exception. */
static inline int slot_true(SlotCache *c, PyObject *obj, int i) {
    PyObject *v = slot_get(c, obj, i);
    if (v == NULL) return -1;
    int r = v == Py_True ? 1 : v == Py_False || v == Py_None ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static inline int slot_add(SlotCache *c, PyObject *obj, int i, long long delta) {
    long long v;
    if (slot_ll(c, obj, i, &v) < 0) return -1;
    return slot_set_ll(c, obj, i, v + delta);
}

#endif
