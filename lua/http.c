/* http.c - grwhd.http: a blocking HTTP client for handlers (libcurl). */
#include "http.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <lauxlib.h>

#include "runtime.h"

#define HTTP_HEADERS_MAX (64 * 1024)
#define HTTP_BOX "grwhd.http.box"

/*
 * Everything C owns during a request lives in this userdata, so a Lua
 * error at any point (a bad argument, no memory for a result) frees it
 * through __gc instead of leaking it.
 */
struct box {
    CURL *curl;
    struct curl_slist *hdrs;
    char *body, *head;
    size_t len, cap, hlen, hcap;
    int too_big;
};

static void
box_release(struct box *b)
{
    if (b->curl)
        curl_easy_cleanup(b->curl);
    curl_slist_free_all(b->hdrs);
    free(b->body);
    free(b->head);
    memset(b, 0, sizeof(*b));
}

static int
box_gc(lua_State *L)
{
    box_release(luaL_checkudata(L, 1, HTTP_BOX));
    return 0;
}

static int
grow_put(char **buf, size_t *len, size_t *cap, const char *data, size_t n,
         size_t max)
{
    if (*len + n > max)
        return -1;
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        char *p;

        while (c < *len + n + 1)
            c *= 2;
        p = realloc(*buf, c);
        if (p == NULL)
            return -1;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

static size_t
on_body(char *data, size_t size, size_t n, void *arg)
{
    struct box *b = arg;

    if (grow_put(&b->body, &b->len, &b->cap, data, size * n,
                 GRWHD_HTTP_BODY_MAX) != 0) {
        b->too_big = 1;
        return 0;       /* makes curl stop with a write error */
    }
    return size * n;
}

static size_t
on_header(char *data, size_t size, size_t n, void *arg)
{
    struct box *b = arg;

    /* A new status line (after 100 Continue) starts the headers over. */
    if (size * n > 5 && strncmp(data, "HTTP/", 5) == 0)
        b->hlen = 0;
    if (grow_put(&b->head, &b->hlen, &b->hcap, data, size * n,
                 HTTP_HEADERS_MAX) != 0)
        return 0;
    return size * n;
}

/* libcurl's global set-up, once and only when a script makes a request:
 * it loads its TLS back end, memory a daemon without requests is spared. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void
curl_setup(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int
bad_header_text(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/*
 * Stack: args ... box.  Adds each headers[name] = value to the request.
 * Returns whether one of them is Content-Type.
 */
static int
add_headers(lua_State *L, struct box *b)
{
    int has_type = 0;

    if (lua_getfield(L, 1, "headers") == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "grwhd.http.request: 'headers' must be a table");
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        const char *k, *v;
        struct curl_slist *sl;

        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
            luaL_error(L, "grwhd.http.request: header names and values "
                          "must be strings");
        k = lua_tostring(L, -2);
        v = lua_tostring(L, -1);
        if (bad_header_text(k) || bad_header_text(v) || strchr(k, ':'))
            luaL_error(L, "grwhd.http.request: header %s: line breaks or "
                          "':' not allowed", k);
        if (strcasecmp(k, "Content-Type") == 0)
            has_type = 1;
        lua_pushfstring(L, "%s: %s", k, v);
        sl = curl_slist_append(b->hdrs, lua_tostring(L, -1));
        if (sl == NULL)
            luaL_error(L, "out of memory");
        b->hdrs = sl;
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    return has_type;
}

/* Pushes the response headers as a table; repeats are joined with ", ". */
static void
push_headers(lua_State *L, const struct box *b)
{
    const char *p = b->head ? b->head : "";

    lua_newtable(L);
    p = strchr(p, '\n');            /* skip the status line */
    while (p != NULL && *++p) {
        const char *end = strchr(p, '\n'), *colon = strchr(p, ':');
        const char *v;
        size_t vn;

        if (end == NULL)
            end = p + strlen(p);
        if (colon != NULL && colon < end) {
            luaL_Buffer name;

            luaL_buffinit(L, &name);
            for (const char *c = p; c < colon; c++)
                luaL_addchar(&name, (char)tolower((unsigned char)*c));
            luaL_pushresult(&name);             /* t name */
            v = colon + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            vn = (size_t)(end - v);
            while (vn > 0 && (v[vn - 1] == '\r' || v[vn - 1] == ' '))
                vn--;
            lua_pushvalue(L, -1);
            if (lua_rawget(L, -3) == LUA_TSTRING) {   /* t name old */
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, vn);
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, vn);
            }
            lua_rawset(L, -3);
        }
        p = *end ? end : NULL;
    }
}

/*
 * Stack: args ...  Pushes args[name] and returns it as text (numbers
 * too, as Lua's own functions take them), or NULL when it is nil.
 */
static const char *
string_field(lua_State *L, const char *name, size_t *len)
{
    int t = lua_getfield(L, 1, name);

    if (t == LUA_TNIL)
        return NULL;
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "grwhd.http.request: '%s' must be a string", name);
    return lua_tolstring(L, -1, len);
}

static int
http_scheme(const char *url)
{
    return strncasecmp(url, "http://", 7) == 0 ||
           strncasecmp(url, "https://", 8) == 0;
}

/*
 * An HTTP method is a token; here letters only, as the methods web
 * services take are.  They are sent in upper case: servers match methods
 * case-sensitively, and the methods they know are upper case.
 */
static const char *
check_method(lua_State *L, const char *m, size_t n, char *out)
{
    if (n == 0 || n > GRWHD_HTTP_METHOD_MAX)
        luaL_error(L, "grwhd.http.request: 'method' must be 1 to %d "
                      "letters", GRWHD_HTTP_METHOD_MAX);
    for (size_t i = 0; i < n; i++) {
        if (!isalpha((unsigned char)m[i]))
            luaL_error(L, "grwhd.http.request: 'method' must be letters "
                          "only, like GET");
        out[i] = (char)toupper((unsigned char)m[i]);
    }
    out[n] = '\0';
    return out;
}

/*
 * With the handler's time spent no request is made.  The call gives what
 * a request cut short by its timeout gives, and the handler is stopped at
 * its next instruction, as a script that ignores the failure would slip
 * between two looks at the clock and return as if it had succeeded.
 */
static int
no_time_left(lua_State *L)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: the handler's time limit was reached",
                    curl_easy_strerror(CURLE_OPERATION_TIMEDOUT));
    lrt_deadline_check(L);
    return 2;
}

int
l_http_request(lua_State *L)
{
    const char *url, *method, *body;
    char method_buf[GRWHD_HTTP_METHOD_MAX + 1];
    size_t url_len = 0, body_len = 0, method_len = 0;
    double timeout, left;
    long timeout_ms;
    int has_type;
    struct box *b;
    CURLcode rc;
    char errbuf[CURL_ERROR_SIZE] = "";
    long status = 0;

    if (!lua_istable(L, 1))
        return luaL_error(L, "grwhd.http.request: expects a table "
                             "{url = ..., ...}, got %s", luaL_typename(L, 1));
    lua_settop(L, 1);
    /* The strings stay on the stack (2..4) while curl uses them. */
    url = string_field(L, "url", &url_len);
    if (url == NULL)
        return luaL_error(L, "grwhd.http.request: 'url' is required");
    if (strlen(url) != url_len)
        return luaL_error(L, "grwhd.http.request: 'url' must not contain "
                             "NUL bytes");
    if (!http_scheme(url))
        return luaL_error(L, "grwhd.http.request: 'url' must start with "
                             "http:// or https://");
    body = string_field(L, "body", &body_len);
    method = string_field(L, "method", &method_len);
    if (method == NULL)
        method = body ? "POST" : "GET";
    else
        method = check_method(L, method, method_len, method_buf);
    if (lua_getfield(L, 1, "timeout") == LUA_TNIL) {
        timeout = GRWHD_HTTP_TIMEOUT;
    } else {
        timeout = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || !(timeout > 0))
            return luaL_error(L, "grwhd.http.request: 'timeout' must be a "
                                 "positive number");
    }
    left = lrt_time_left(L);
    if (left <= 0)
        return no_time_left(L);
    if (left < timeout)
        timeout = left;
    /* Whole milliseconds, never 0 (curl's "no timeout"); a day at most,
     * which also keeps the product inside a long. */
    if (timeout > 86400)
        timeout = 86400;
    timeout_ms = (long)ceil(timeout * 1000);

    b = lua_newuserdatauv(L, sizeof(*b), 0);        /* args ... box */
    memset(b, 0, sizeof(*b));
    luaL_setmetatable(L, HTTP_BOX);
    pthread_once(&curl_once, curl_setup);
    b->curl = curl_easy_init();
    if (b->curl == NULL)
        return luaL_error(L, "cannot start an HTTP request");
    has_type = add_headers(L, b);
    /* curl would label a body form data; send no type unless told. */
    if (body != NULL && !has_type) {
        struct curl_slist *sl = curl_slist_append(b->hdrs, "Content-Type:");

        if (sl == NULL)
            return luaL_error(L, "out of memory");
        b->hdrs = sl;
    }

    curl_easy_setopt(b->curl, CURLOPT_URL, url);
    curl_easy_setopt(b->curl, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(b->curl, CURLOPT_NOBODY, 1L);
    if (body != NULL) {
        curl_easy_setopt(b->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(b->curl, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)body_len);
    }
    curl_easy_setopt(b->curl, CURLOPT_HTTPHEADER, b->hdrs);
    curl_easy_setopt(b->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(b->curl, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(b->curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(b->curl, CURLOPT_HEADERDATA, b);
    curl_easy_setopt(b->curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(b->curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(b->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(b->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(b->curl, CURLOPT_MAXFILESIZE_LARGE,
                     (curl_off_t)GRWHD_HTTP_BODY_MAX);
    curl_easy_setopt(b->curl, CURLOPT_USERAGENT, "grwhd");

    rc = curl_easy_perform(b->curl);
    if (rc != CURLE_OK) {
        lua_pushnil(L);
        if (b->too_big)
            lua_pushfstring(L, "response larger than %d bytes",
                            (int)GRWHD_HTTP_BODY_MAX);
        else
            lua_pushfstring(L, "%s: %s", curl_easy_strerror(rc),
                            errbuf[0] ? errbuf : url);
        box_release(b);
        return 2;
    }
    curl_easy_getinfo(b->curl, CURLINFO_RESPONSE_CODE, &status);
    lua_pushinteger(L, status);
    lua_pushlstring(L, b->body ? b->body : "", b->len);
    push_headers(L, b);
    box_release(b);
    return 3;
}

void
http_init(lua_State *L)
{
    if (luaL_newmetatable(L, HTTP_BOX)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}
