/*
 * suitkit.core._strictcbor: the fast path of suitkit.core.cbor.decode.
 *
 * decode(data, max_depth) returns a 1-tuple holding the decoded item, or None. None means
 * "not decided here": the caller then runs the reference decoder (cbor2 plus our checks in
 * cbor.py), which accepts or refuses the input and words the error. So this file has one rule:
 * it may only return a value where the reference decoder would return an equal value of the
 * same types, and it returns None for everything else. It never raises.
 *
 * Decided here: one well-formed item with no trailing bytes, every head in its shortest form
 * (RFC 8949 §4.2.1 preferred serialization, so the reference's preferred check holds too),
 * definite lengths, unsigned and negative integers, byte and text strings (strict UTF-8), arrays,
 * maps whose keys are integers or strings and unique, false, true, null, and the tags of SUIT
 * and COSE (other tags, floats, undefined and other simple values are left to the reference
 * decoder). Inside a tag, arrays become tuples and maps cbor2.frozendict, as cbor2
 * builds them there. Nesting deeper than min(max_depth, 256) - 1 is left to the reference
 * decoder.
 *
 * Bounds: every length is checked against the bytes left before anything is read or
 * allocated, less the bytes the open containers have promised to their items (a container of
 * n items needs n bytes no other container has claimed), so all containers together hold at
 * most one slot per input byte, and an array longer than PREALLOCATE_UP_TO only holds the slots
 * of the items decoded so far; nesting is bounded by max_depth and by MAX_DEPTH.
 *
 * tests/core/test_strictcbor.py checks the rule above against the reference decoder
 * (hypothesis: generated items, every encoding of their heads, mutated bytes); fuzz/ runs the
 * same comparison coverage-guided.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    size_t pending; /* items promised by the open containers and not begun: a byte each */
    int max_depth;
} Reader;

/* Room for n more items, each at least one byte, in what the open containers have not already
 * promised to theirs. Without the promises counted, every level of nesting could claim the
 * whole rest of the input again (n nested heads: n times the input size in item slots). */
static int room_for(const Reader *r, uint64_t n) {
    size_t left = (size_t)(r->end - r->p);
    return r->pending <= left && n <= (uint64_t)(left - r->pending);
}

/* Nesting decided here at most; deeper items go to the reference decoder. About 150 bytes of C
 * stack a level: 256 levels fit the smallest thread stacks (musl's 128 KiB). */
#define MAX_DEPTH 256

static PyObject *cbor_tag_type;   /* cbor2.CBORTag */
static PyObject *frozendict_type; /* cbor2.frozendict */

/* The tags decided here: the ones SUIT and COSE use: COSE_Encrypt0 16, COSE_Mac0 17, COSE_Sign1
 * 18, COSE_Encrypt 96, COSE_Mac 97, COSE_Sign 98, SUIT_Envelope 107, a PEN 112 and SUIT_Manifest
 * 1070 (suitkit.core.numbers.Tag, less the epoch time tag 1, which cbor2 interprets). cbor2 gives a meaning of its own to some 23 other tags
 * (and may add more in a release); items under any tag not listed are left to the reference
 * decoder, which keeps every tag raw. */
static const uint64_t decided_tags[] = {16, 17, 18, 96, 97, 98, 107, 112, 1070};

static int is_decided_tag(uint64_t tag) {
    for (size_t i = 0; i < sizeof decided_tags / sizeof decided_tags[0]; i++) {
        if (decided_tags[i] == tag) {
            return 1;
        }
    }
    return 0;
}

/* Read one head: major type and argument. 0 on success, -1 to defer (truncated, reserved
 * additional information, indefinite length, or an argument not in its shortest form). */
static int read_head(Reader *r, int *major, uint64_t *arg) {
    if (r->p >= r->end) {
        return -1;
    }
    uint8_t initial = *r->p++;
    *major = initial >> 5;
    uint8_t info = initial & 0x1f;
    if (info < 24) {
        *arg = info;
        return 0;
    }
    if (info > 27) {
        return -1; /* 28-30 reserved, 31 indefinite or break */
    }
    size_t n = (size_t)1 << (info - 24); /* 1, 2, 4 or 8 bytes */
    if ((size_t)(r->end - r->p) < n) {
        return -1;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v = (v << 8) | r->p[i];
    }
    r->p += n;
    /* preferred serialization: the shortest head that holds the argument */
    static const uint64_t smallest[4] = {24, 0x100, 0x10000, 0x100000000ULL};
    if (v < smallest[info - 24]) {
        return -1;
    }
    *arg = v;
    return 0;
}

static PyObject *decode_item(Reader *r, int depth, int immutable);

/* Arrays up to this many items get their slots at once; a longer one grows as its items are
 * decoded, so that a head claiming a million items costs nothing before the items are there
 * (the reference decoder would refuse such an input after a few bytes). */
#define PREALLOCATE_UP_TO 1024

static PyObject *decode_array(Reader *r, uint64_t n, int depth, int immutable) {
    if (!room_for(r, n)) {
        return NULL;
    }
    Py_ssize_t count = (Py_ssize_t)n;
    int grow = count > PREALLOCATE_UP_TO;
    PyObject *out = grow ? PyList_New(0) : immutable ? PyTuple_New(count) : PyList_New(count);
    if (out == NULL) {
        return NULL;
    }
    r->pending += (size_t)n;
    for (Py_ssize_t i = 0; i < count; i++) {
        r->pending--; /* this item begins */
        PyObject *item = decode_item(r, depth + 1, immutable);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (grow) {
            int failed = PyList_Append(out, item);
            Py_DECREF(item);
            if (failed) {
                Py_DECREF(out);
                return NULL;
            }
        } else if (immutable) {
            PyTuple_SET_ITEM(out, i, item);
        } else {
            PyList_SET_ITEM(out, i, item);
        }
    }
    if (grow && immutable) {
        PyObject *tuple = PyList_AsTuple(out);
        Py_DECREF(out);
        return tuple;
    }
    return out;
}

static PyObject *decode_map(Reader *r, uint64_t n, int depth, int immutable) {
    if (n > UINT64_MAX / 2 || !room_for(r, 2 * n)) {
        return NULL; /* each entry takes at least two bytes */
    }
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    r->pending += (size_t)(2 * n);
    for (uint64_t i = 0; i < n; i++) {
        r->pending -= 2; /* this entry begins: its key and its value */
        /* keys: integers and strings only (true/false would collide with 1/0) */
        if (r->p >= r->end || ((*r->p >> 5) > 3)) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *key = decode_item(r, depth + 1, 1);
        if (key == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        int seen = PyDict_Contains(out, key);
        if (seen != 0) { /* a duplicate key, or an error */
            Py_DECREF(key);
            Py_DECREF(out);
            return NULL;
        }
        PyObject *value = decode_item(r, depth + 1, immutable);
        if (value == NULL) {
            Py_DECREF(key);
            Py_DECREF(out);
            return NULL;
        }
        int failed = PyDict_SetItem(out, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed) {
            Py_DECREF(out);
            return NULL;
        }
    }
    if (immutable) {
        PyObject *frozen = PyObject_CallOneArg(frozendict_type, out);
        Py_DECREF(out);
        return frozen;
    }
    return out;
}

/* NULL means "defer" (a Python exception may be set; the caller clears it). */
static PyObject *decode_item(Reader *r, int depth, int immutable) {
    int major;
    uint64_t arg;
    if (read_head(r, &major, &arg) < 0) {
        return NULL;
    }
    switch (major) {
    case 0:
        return PyLong_FromUnsignedLongLong(arg);
    case 1: {
        if (arg <= (uint64_t)INT64_MAX) {
            return PyLong_FromLongLong(-1 - (long long)arg);
        }
        PyObject *u = PyLong_FromUnsignedLongLong(arg);
        if (u == NULL) {
            return NULL;
        }
        PyObject *neg = PyNumber_Negative(u);
        Py_DECREF(u);
        if (neg == NULL) {
            return NULL;
        }
        PyObject *one = PyLong_FromLong(1);
        PyObject *out = one == NULL ? NULL : PyNumber_Subtract(neg, one);
        Py_XDECREF(one);
        Py_DECREF(neg);
        return out;
    }
    case 2:
    case 3: {
        if (!room_for(r, arg)) {
            return NULL; /* the bytes left, less those promised to the items after it */
        }
        const char *start = (const char *)r->p;
        r->p += arg;
        if (major == 2) {
            return PyBytes_FromStringAndSize(start, (Py_ssize_t)arg);
        }
        return PyUnicode_DecodeUTF8(start, (Py_ssize_t)arg, "strict");
    }
    case 4:
    case 5:
        if (depth + 1 >= r->max_depth) {
            return NULL;
        }
        return major == 4 ? decode_array(r, arg, depth, immutable)
                          : decode_map(r, arg, depth, immutable);
    case 6: {
        if (depth + 1 >= r->max_depth || !is_decided_tag(arg)) {
            return NULL;
        }
        PyObject *value = decode_item(r, depth + 1, 1);
        if (value == NULL) {
            return NULL;
        }
        PyObject *tag = PyLong_FromUnsignedLongLong(arg);
        if (tag == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        PyObject *out = PyObject_CallFunctionObjArgs(cbor_tag_type, tag, value, NULL);
        Py_DECREF(tag);
        Py_DECREF(value);
        return out;
    }
    default: /* major 7: only false, true and null are decided here */
        if (arg == 20) {
            Py_RETURN_FALSE;
        }
        if (arg == 21) {
            Py_RETURN_TRUE;
        }
        if (arg == 22) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
}

static PyObject *strictcbor_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyLong_Check(args[1])) {
        Py_RETURN_NONE; /* not decided here: the reference decoder takes other buffers */
    }
    int overflow;
    long max_depth = PyLong_AsLongAndOverflow(args[1], &overflow);
    if (max_depth == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (overflow > 0 || max_depth > MAX_DEPTH) {
        max_depth = MAX_DEPTH;
    }
    if (overflow < 0 || max_depth < 2) {
        Py_RETURN_NONE;
    }
    Reader r;
    r.p = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    r.end = r.p + PyBytes_GET_SIZE(args[0]);
    r.pending = 0;
    r.max_depth = (int)max_depth;
    PyObject *item = decode_item(&r, 0, 0);
    if (item == NULL || r.p != r.end) {
        Py_XDECREF(item);
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *out = PyTuple_New(1);
    if (out == NULL) {
        Py_DECREF(item);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, item);
    return out;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))strictcbor_decode, METH_FASTCALL,
     "decode(data, max_depth) -> (item,) or None: the fast path of suitkit.core.cbor.decode."},
    {NULL, NULL, 0, NULL},
};

static int strictcbor_exec(PyObject *module) {
    (void)module;
    PyObject *cbor2 = PyImport_ImportModule("cbor2");
    if (cbor2 == NULL) {
        return -1;
    }
    PyObject *tag = PyObject_GetAttrString(cbor2, "CBORTag");
    PyObject *frozen = tag == NULL ? NULL : PyObject_GetAttrString(cbor2, "frozendict");
    Py_DECREF(cbor2);
    if (frozen == NULL) {
        Py_XDECREF(tag);
        return -1;
    }
    /* executed again on a re-import: the types of the first import are let go */
    PyObject *old_tag = cbor_tag_type, *old_frozen = frozendict_type;
    cbor_tag_type = tag;
    frozendict_type = frozen;
    Py_XDECREF(old_tag);
    Py_XDECREF(old_frozen);
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, strictcbor_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_strictcbor",
    "The compiled fast path of suitkit.core.cbor.decode (see the comment atop the source).",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__strictcbor(void) {
    return PyModuleDef_Init(&module_def);
}
