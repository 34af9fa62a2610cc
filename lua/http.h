/* http.h - grwhd.http: a blocking HTTP client for handlers (libcurl). */
#ifndef GRWHD_HTTP_H
#define GRWHD_HTTP_H

#include <lua.h>

/* Largest response body a handler may receive. */
#define GRWHD_HTTP_BODY_MAX (16L << 20)
/* Timeout when the caller gives none and no handler deadline applies. */
#define GRWHD_HTTP_TIMEOUT 30.0
/* Longest method name taken. */
#define GRWHD_HTTP_METHOD_MAX 32

/*
 * grwhd.http.request{url=, method=, headers=, body=, timeout=} returns
 * status, body, headers (names in lower case), or nil and a message when
 * no answer came (refused, timed out, bad URL).  The wait never exceeds
 * what remains of the running handler's time; with none left, no request
 * is made and the result is that of a timeout.  Raises on bad arguments
 * (a url that is not http(s), a method that is not letters).
 */
int l_http_request(lua_State *L);
/* Registers what l_http_request needs in a state; call once per state. */
void http_init(lua_State *L);

#endif
