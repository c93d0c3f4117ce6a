/* The receive side's kernel stamp: sfu.node.arrival.ArrivalClock's read in native code.
 *
 *   receive_stamp(fd) -> float   the wall-clock time (seconds) the kernel
 *                                stamped the datagram last read on ``fd``
 *                                (SIOCGSTAMPNS, socket(7)); -1.0 when the
 *                                socket gives none (no datagram read yet,
 *                                not a socket, a sandbox without the ioctl)
 *
 * The same ioctl and the same float (seconds + nanoseconds * 1e-9) as the
 * Python read through fcntl.ioctl and rtc.stamps.TIMESPEC, without the
 * buffer copies and the unpack of each datagram's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <time.h>

#include "_fanout.h"

PyObject *fanout_receive_stamp(PyObject *module, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT_MAX) return PyFloat_FromDouble(-1.0);
    struct timespec ts;
    if (ioctl((int)fd, SIOCGSTAMPNS, &ts) < 0) return PyFloat_FromDouble(-1.0);
    return PyFloat_FromDouble((double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
}
