/* batch.c - a request body turned into the events it carries. */
#include "batch.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/*
 * One pass over the body checks the JSON grammar, writes each event's text
 * without the white space between tokens, and picks out the two members
 * the core needs (type, contact.contactId), so the request path touches
 * every byte once and allocates nothing per JSON node.
 */

static const char replacement[3] = {'\xef', '\xbf', '\xbd'};

enum want {
    WANT_NONE,
    WANT_EVENT,         /* an event object: look for type and contact */
    WANT_CONTACT,       /* its contact object: look for contactId */
};

struct scan {
    const char *s;
    size_t len, pos;
    char *out;          /* compact copy; never longer than the input */
    size_t o;
    struct gerr *err;
    /* Spans in out of the current event's captured strings. */
    size_t type_at, type_len, contact_at, contact_len;
    bool has_type, has_contact;
};

/*
 * Returns a copy of s in which every byte that does not belong to a valid
 * UTF-8 sequence became U+FFFD.  Replacing, rather than refusing, keeps an
 * event that a 400 would lose for good.
 */
static char *
utf8_repair(const char *s, size_t len, size_t *out_len)
{
    char *out = xmalloc(len * 3 + 1);
    size_t i = 0, o = 0;

    while (i < len) {
        size_t ok = util_utf8_valid((const unsigned char *)s + i, len - i);

        memcpy(out + o, s + i, ok);
        o += ok;
        i += ok;
        if (i < len) {
            memcpy(out + o, replacement, 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

static int
fail(struct scan *sc, const char *what)
{
    if (sc->pos >= sc->len)
        gerr_set(sc->err, "body is not valid JSON (it ends early, after "
                 "byte %zu: %s)", sc->len, what);
    else
        gerr_set(sc->err, "body is not valid JSON (%s at byte %zu)", what,
                 sc->pos + 1);
    return -1;
}

static void
skip_ws(struct scan *sc)
{
    while (sc->pos < sc->len) {
        char c = sc->s[sc->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        sc->pos++;
    }
}

static bool
is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
}

/* A string, copied as it is (escapes kept); *at is where its body starts. */
static int
scan_string(struct scan *sc, size_t *at, size_t *n)
{
    const char *s = sc->s;

    sc->out[sc->o++] = '"';
    sc->pos++;
    *at = sc->o;
    for (;;) {
        size_t start = sc->pos;
        unsigned char c = 0;

        /* Plain bytes in bulk: the common case by far. */
        while (sc->pos < sc->len) {
            c = (unsigned char)s[sc->pos];
            if (c == '"' || c == '\\' || c < 0x20)
                break;
            sc->pos++;
        }
        memcpy(sc->out + sc->o, s + start, sc->pos - start);
        sc->o += sc->pos - start;
        if (sc->pos >= sc->len)
            return fail(sc, "unterminated string");
        if (c == '"')
            break;
        if (c < 0x20)
            return fail(sc, "control character in string");
        if (sc->pos + 1 >= sc->len)
            return fail(sc, "unterminated string");
        c = (unsigned char)s[sc->pos + 1];
        if (c == 'u') {
            if (sc->pos + 6 > sc->len || !is_hex(s[sc->pos + 2]) ||
                !is_hex(s[sc->pos + 3]) || !is_hex(s[sc->pos + 4]) ||
                !is_hex(s[sc->pos + 5]))
                return fail(sc, "bad \\u escape");
            memcpy(sc->out + sc->o, s + sc->pos, 6);
            sc->o += 6;
            sc->pos += 6;
        } else if (strchr("\"\\/bfnrt", (char)c) != NULL && c != '\0') {
            sc->out[sc->o++] = '\\';
            sc->out[sc->o++] = (char)c;
            sc->pos += 2;
        } else {
            return fail(sc, "bad escape");
        }
    }
    *n = sc->o - *at;
    sc->out[sc->o++] = '"';
    sc->pos++;
    return 0;
}

static int
scan_number(struct scan *sc)
{
    const char *s = sc->s;
    size_t start = sc->pos;

#define DIGIT(i) ((i) < sc->len && s[i] >= '0' && s[i] <= '9')
    if (sc->pos < sc->len && s[sc->pos] == '-')
        sc->pos++;
    if (!DIGIT(sc->pos))
        return fail(sc, "unexpected character");
    if (s[sc->pos] == '0') {
        sc->pos++;
        if (DIGIT(sc->pos))
            return fail(sc, "leading zero");
    } else {
        while (DIGIT(sc->pos))
            sc->pos++;
    }
    if (sc->pos < sc->len && s[sc->pos] == '.') {
        sc->pos++;
        if (!DIGIT(sc->pos))
            return fail(sc, "bad number");
        while (DIGIT(sc->pos))
            sc->pos++;
    }
    if (sc->pos < sc->len && (s[sc->pos] == 'e' || s[sc->pos] == 'E')) {
        sc->pos++;
        if (sc->pos < sc->len && (s[sc->pos] == '+' || s[sc->pos] == '-'))
            sc->pos++;
        if (!DIGIT(sc->pos))
            return fail(sc, "bad number");
        while (DIGIT(sc->pos))
            sc->pos++;
    }
#undef DIGIT
    memcpy(sc->out + sc->o, s + start, sc->pos - start);
    sc->o += sc->pos - start;
    return 0;
}

static int
scan_literal(struct scan *sc, const char *word, size_t n)
{
    if (sc->pos + n > sc->len || memcmp(sc->s + sc->pos, word, n) != 0)
        return fail(sc, "unexpected character");
    memcpy(sc->out + sc->o, word, n);
    sc->o += n;
    sc->pos += n;
    return 0;
}

static int scan_value(struct scan *sc, int depth, enum want want);

static bool
key_is(const struct scan *sc, size_t at, size_t n, const char *name)
{
    return n == strlen(name) && memcmp(sc->out + at, name, n) == 0;
}

/*
 * After a member or an element: a ',' (returns 1, another follows) or the
 * closing bracket (returns 0), either copied to the compact text; else
 * fails (-1).
 */
static int
after_item(struct scan *sc, char close)
{
    skip_ws(sc);
    if (sc->pos < sc->len &&
        (sc->s[sc->pos] == ',' || sc->s[sc->pos] == close)) {
        char c = sc->s[sc->pos++];

        sc->out[sc->o++] = c;
        return c == ',';
    }
    return fail(sc, close == '}' ? "expected ',' or '}'"
                                 : "expected ',' or ']'");
}

static int
scan_object(struct scan *sc, int depth, enum want want)
{
    sc->out[sc->o++] = '{';
    sc->pos++;
    skip_ws(sc);
    if (sc->pos < sc->len && sc->s[sc->pos] == '}') {
        sc->out[sc->o++] = '}';
        sc->pos++;
        return 0;
    }
    for (;;) {
        size_t kat, kn;
        enum want sub = WANT_NONE;
        int rc;
        bool is_type = false, is_cid = false;

        skip_ws(sc);
        if (sc->pos >= sc->len || sc->s[sc->pos] != '"')
            return fail(sc, "expected a member name");
        if (scan_string(sc, &kat, &kn) != 0)
            return -1;
        if (want == WANT_EVENT) {
            is_type = key_is(sc, kat, kn, "type");
            if (key_is(sc, kat, kn, "contact"))
                sub = WANT_CONTACT;
        } else if (want == WANT_CONTACT) {
            is_cid = key_is(sc, kat, kn, "contactId");
        }
        skip_ws(sc);
        if (sc->pos >= sc->len || sc->s[sc->pos] != ':')
            return fail(sc, "expected ':'");
        sc->out[sc->o++] = ':';
        sc->pos++;
        skip_ws(sc);
        if ((is_type || is_cid) && sc->pos < sc->len &&
            sc->s[sc->pos] == '"') {
            size_t vat, vn;

            if (scan_string(sc, &vat, &vn) != 0)
                return -1;
            if (is_type) {
                sc->type_at = vat;
                sc->type_len = vn;
                sc->has_type = true;
            } else {
                sc->contact_at = vat;
                sc->contact_len = vn;
                sc->has_contact = true;
            }
        } else if (scan_value(sc, depth, sub) != 0) {
            return -1;
        }
        if ((rc = after_item(sc, '}')) != 1)
            return rc;
    }
}

static int
scan_array(struct scan *sc, int depth)
{
    sc->out[sc->o++] = '[';
    sc->pos++;
    skip_ws(sc);
    if (sc->pos < sc->len && sc->s[sc->pos] == ']') {
        sc->out[sc->o++] = ']';
        sc->pos++;
        return 0;
    }
    for (;;) {
        int rc;

        if (scan_value(sc, depth, WANT_NONE) != 0)
            return -1;
        if ((rc = after_item(sc, ']')) != 1)
            return rc;
    }
}

static int
scan_value(struct scan *sc, int depth, enum want want)
{
    size_t at, n;

    skip_ws(sc);
    if (sc->pos >= sc->len)
        return fail(sc, "expected a value");
    switch (sc->s[sc->pos]) {
    case '{':
    case '[':
        if (depth + 1 > GRWHD_JSON_DEPTH_MAX) {
            gerr_set(sc->err, "JSON nests deeper than %d levels",
                     GRWHD_JSON_DEPTH_MAX);
            return -1;
        }
        return sc->s[sc->pos] == '{' ? scan_object(sc, depth + 1, want)
                                     : scan_array(sc, depth + 1);
    case '"': return scan_string(sc, &at, &n);
    case 't': return scan_literal(sc, "true", 4);
    case 'f': return scan_literal(sc, "false", 5);
    case 'n': return scan_literal(sc, "null", 4);
    default: return scan_number(sc);
    }
}

/* A captured string's value, with its escapes undone. */
static char *
unescape(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            out[o++] = s[i];
            continue;
        }
        i++;
        switch (s[i]) {
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            /* Enough for names and ids; a surrogate becomes U+FFFD. */
            unsigned cp = (unsigned)strtoul((char[5]){s[i + 1], s[i + 2],
                                                      s[i + 3], s[i + 4], 0},
                                            NULL, 16);
            i += 4;
            if (cp >= 0xd800 && cp <= 0xdfff)
                cp = 0xfffd;
            if (cp < 0x80) {
                out[o++] = (char)(cp ? cp : '?');
            } else if (cp < 0x800) {
                out[o++] = (char)(0xc0 | (cp >> 6));
                out[o++] = (char)(0x80 | (cp & 0x3f));
            } else {
                out[o++] = (char)(0xe0 | (cp >> 12));
                out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[o++] = (char)(0x80 | (cp & 0x3f));
            }
            break;
        }
        default: out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

static char *
captured(const struct scan *sc, bool has, size_t at, size_t n)
{
    if (!has)
        return xstrdup("");
    if (memchr(sc->out + at, '\\', n) == NULL)
        return xstrndup(sc->out + at, n);
    return unescape(sc->out + at, n);
}

static int
scan_event(struct scan *sc, struct batch *b, size_t *cap, bool in_array)
{
    size_t start = sc->o;
    struct batch_event *ev;

    if (sc->s[sc->pos] != '{') {
        if (!in_array) {
            gerr_set(sc->err, "body is neither an object nor an array");
            return -1;
        }
        /* Counted from 1, like meta.batch_index. */
        gerr_set(sc->err, "element %zu is not an object", b->n + 1);
        return -1;
    }
    if (b->n == GRWHD_BATCH_MAX) {
        b->too_many = true;
        gerr_set(sc->err, "more than %d events in one request",
                 GRWHD_BATCH_MAX);
        return -1;
    }
    sc->has_type = sc->has_contact = false;
    if (scan_object(sc, in_array ? 2 : 1, WANT_EVENT) != 0)
        return -1;
    if (b->n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        b->ev = xrealloc(b->ev, *cap * sizeof(*b->ev));
    }
    ev = &b->ev[b->n++];
    ev->json = sc->out + start;
    ev->len = sc->o - start;
    ev->type = captured(sc, sc->has_type, sc->type_at, sc->type_len);
    ev->contact =
        captured(sc, sc->has_contact, sc->contact_at, sc->contact_len);
    return 0;
}

static bool
is_scalar_start(char c)
{
    return c == '"' || c == '-' || (c >= '0' && c <= '9') || c == 't' ||
           c == 'f' || c == 'n';
}

static int
scan_body(struct scan *sc, struct batch *b)
{
    size_t cap = 0;

    skip_ws(sc);
    if (sc->pos == sc->len) {
        gerr_set(sc->err, "body is empty");
        return -1;
    }
    if (sc->s[sc->pos] == '[') {
        b->is_array = true;
        sc->pos++;
        skip_ws(sc);
        if (sc->pos < sc->len && sc->s[sc->pos] == ']') {
            sc->pos++;
        } else {
            for (;;) {
                skip_ws(sc);
                if (sc->pos >= sc->len)
                    return fail(sc, "unterminated array");
                if (scan_event(sc, b, &cap, true) != 0)
                    return -1;
                skip_ws(sc);
                if (sc->pos < sc->len && sc->s[sc->pos] == ',') {
                    sc->pos++;
                    continue;
                }
                if (sc->pos < sc->len && sc->s[sc->pos] == ']') {
                    sc->pos++;
                    break;
                }
                return fail(sc, "expected ',' or ']'");
            }
        }
    } else if (sc->s[sc->pos] == '{') {
        if (scan_event(sc, b, &cap, false) != 0)
            return -1;
    } else if (is_scalar_start(sc->s[sc->pos])) {
        struct gerr ignored;
        struct gerr *keep = sc->err;

        /* Say whether it was JSON at all, for a clearer 400. */
        sc->err = &ignored;
        if (scan_value(sc, 0, WANT_NONE) == 0) {
            skip_ws(sc);
            if (sc->pos == sc->len) {
                gerr_set(keep, "body is neither an object nor an array");
                return -1;
            }
        }
        sc->err = keep;
        gerr_set(sc->err, "body is not valid JSON");
        return -1;
    } else {
        return fail(sc, "unexpected character");
    }
    skip_ws(sc);
    if (sc->pos != sc->len)
        return fail(sc, "data after the value");
    return 0;
}

int
batch_parse(struct batch *b, char *body, size_t len, struct gerr *err)
{
    struct scan sc;

    memset(b, 0, sizeof(*b));
    b->body = body;
    b->len = len;
    if (util_utf8_valid((const unsigned char *)body, len) != len) {
        b->body = utf8_repair(body, len, &b->len);
        b->repaired = true;
        free(body);
    }
    memset(&sc, 0, sizeof(sc));
    sc.s = b->body;
    sc.len = b->len;
    sc.out = b->compact = xmalloc(b->len + 1);
    sc.err = err;
    if (scan_body(&sc, b) != 0)
        return -1;
    return 0;
}

void
batch_free(struct batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->ev[i].type);
        free(b->ev[i].contact);
    }
    free(b->ev);
    free(b->body);
    free(b->compact);
    memset(b, 0, sizeof(*b));
}
