/* batch.c - a request body turned into the events it carries. */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

static const char replacement[3] = {'\xef', '\xbf', '\xbd'};

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

static size_t
skip_ws(const char *s, size_t i, size_t len)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' ||
                       s[i] == '\r'))
        i++;
    return i;
}

/*
 * Finds the end of the value that starts at s[i]: brackets are matched,
 * strings skipped.  Only the extent is found here; cJSON checks the
 * grammar afterwards.  Returns the offset just past the value, or 0.
 */
static size_t
value_end(const char *s, size_t i, size_t len, struct gerr *err)
{
    int depth = 0;

    if (s[i] != '{' && s[i] != '[') {
        while (i < len && strchr(" \t\r\n,]}", s[i]) == NULL)
            i++;
        return i;
    }
    for (; i < len; i++) {
        char c = s[i];

        if (c == '"') {
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            if (i >= len)
                break;
        } else if (c == '{' || c == '[') {
            if (++depth > GRWHD_JSON_DEPTH_MAX) {
                gerr_set(err, "JSON nests deeper than %d levels",
                         GRWHD_JSON_DEPTH_MAX);
                return 0;
            }
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return i + 1;
        }
    }
    gerr_set(err, "body is not valid JSON (unterminated)");
    return 0;
}

static char *
string_member(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

    return xstrdup(cJSON_IsString(v) ? v->valuestring : "");
}

/* Checks one element and fills ev from it. */
static int
event_fill(struct batch_event *ev, const char *s, size_t len, size_t index,
           bool in_array, struct gerr *err)
{
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(s, len, &end, 0);

    if (obj == NULL || end != s + len) {
        if (in_array)
            gerr_set(err, "element %zu is not valid JSON", index);
        else
            gerr_set(err, "body is not valid JSON");
        cJSON_Delete(obj);
        return -1;
    }
    if (!cJSON_IsObject(obj)) {
        if (in_array)
            gerr_set(err, "element %zu is not an object", index);
        else
            gerr_set(err, "body is neither an object nor an array");
        cJSON_Delete(obj);
        return -1;
    }
    ev->json = s;
    ev->len = len;
    ev->type = string_member(obj, "type");
    ev->contact = xstrdup("");
    {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(obj, "contact");
        if (cJSON_IsObject(c)) {
            free(ev->contact);
            ev->contact = string_member(c, "contactId");
        }
    }
    cJSON_Delete(obj);
    return 0;
}

static int
push_event(struct batch *b, size_t *cap, size_t start, size_t end,
           bool in_array, struct gerr *err)
{
    if (b->n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        b->ev = xrealloc(b->ev, *cap * sizeof(*b->ev));
    }
    if (event_fill(&b->ev[b->n], b->body + start, end - start, b->n,
                   in_array, err) != 0)
        return -1;
    b->n++;
    return 0;
}

static int
parse_array(struct batch *b, size_t i, struct gerr *err)
{
    const char *s = b->body;
    size_t len = b->len, cap = 0;

    i = skip_ws(s, i + 1, len);
    if (i < len && s[i] == ']')
        return skip_ws(s, i + 1, len) == len ? 0 : -2;
    for (;;) {
        size_t end;

        if (i >= len) {
            gerr_set(err, "body is not valid JSON (unterminated array)");
            return -1;
        }
        if (s[i] != '{') {
            end = value_end(s, i, len, err);
            if (end == 0)
                return -1;
            gerr_set(err, "element %zu is not an object", b->n);
            return -1;
        }
        end = value_end(s, i, len, err);
        if (end == 0 || push_event(b, &cap, i, end, true, err) != 0)
            return -1;
        i = skip_ws(s, end, len);
        if (i < len && s[i] == ',') {
            i = skip_ws(s, i + 1, len);
            continue;
        }
        if (i < len && s[i] == ']')
            return skip_ws(s, i + 1, len) == len ? 0 : -2;
        gerr_set(err, "body is not valid JSON (expected , or ] at byte %zu)",
                 i);
        return -1;
    }
}

int
batch_parse(struct batch *b, char *body, size_t len, struct gerr *err)
{
    size_t i, bad, end, cap = 0;
    int rc;

    memset(b, 0, sizeof(*b));
    b->body = body;
    b->len = len;
    bad = util_utf8_valid((const unsigned char *)body, len);
    if (bad != len) {
        b->body = utf8_repair(body, len, &b->len);
        b->repaired = true;
        free(body);
    }
    i = skip_ws(b->body, 0, b->len);
    if (i == b->len) {
        gerr_set(err, "body is empty");
        return -1;
    }
    if (b->body[i] == '[') {
        b->is_array = true;
        rc = parse_array(b, i, err);
        if (rc == -2)
            gerr_set(err, "body is not valid JSON (data after the array)");
        return rc == 0 ? 0 : -1;
    }
    if (b->body[i] != '{') {
        /* A scalar: say whether it was JSON at all, for a clearer 400. */
        cJSON *v = cJSON_ParseWithLength(b->body, b->len);

        gerr_set(err, v ? "body is neither an object nor an array"
                        : "body is not valid JSON");
        cJSON_Delete(v);
        return -1;
    }
    end = value_end(b->body, i, b->len, err);
    if (end == 0)
        return -1;
    if (skip_ws(b->body, end, b->len) != b->len) {
        gerr_set(err, "body is not valid JSON (data after the object)");
        return -1;
    }
    return push_event(b, &cap, i, end, false, err);
}

size_t
batch_compact(const char *s, size_t len, char *out)
{
    size_t o = 0;
    bool in_str = false;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (in_str) {
            out[o++] = c;
            if (c == '\\' && i + 1 < len)
                out[o++] = s[++i];
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
            out[o++] = c;
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return o;
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
    memset(b, 0, sizeof(*b));
}
