/* check_convert.c - JSON <-> Lua values, and the handler runtime. */
#include "check_suites.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <cJSON.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../core/util.h"
#include "../lua/convert.h"
#include "../lua/runtime.h"

/* ------------------------------------------------------------------ */
/* convert                                                              */

static lua_State *L;
static char errbuf[1024];

/* decode(ptr, len): the text is an exact-size buffer, so ASan and
 * valgrind see any read past its end. */
static int
l_decode_raw(lua_State *L1)
{
    const char *s = lua_touserdata(L1, 1);
    size_t n = (size_t)lua_tointeger(L1, 2);

    lua_settop(L1, 0);
    convert_decode(L1, s, n);
    return 1;
}

static int
l_decode(lua_State *L1)
{
    size_t n;
    const char *s = luaL_checklstring(L1, 1, &n);

    convert_decode(L1, s, n);
    return 1;
}

static int
l_encode(lua_State *L1)
{
    luaL_checkany(L1, 1);
    convert_encode(L1, 1);
    return 1;
}

/* Globals the Lua chunks below rely on. */
static const char prelude[] =
    "function eq(got, want)\n"
    "  if got ~= want then\n"
    "    error(string.format('got %q, want %q', tostring(got),\n"
    "                        tostring(want)), 2)\n"
    "  end\n"
    "end\n"
    "function fails(v, want)\n"
    "  local ok, e = pcall(encode, v)\n"
    "  if ok then error('encoded as ' .. e, 2) end\n"
    "  if not string.find(e, want, 1, true) then\n"
    "    error('wrong error: ' .. e, 2)\n"
    "  end\n"
    "end\n"
    "function deep_equal(a, b, path)\n"
    "  path = path or '$'\n"
    "  if type(a) ~= type(b) then\n"
    "    return false, path .. ': ' .. type(a) .. ' vs ' .. type(b)\n"
    "  end\n"
    "  if type(a) ~= 'table' then\n"
    "    if a ~= b then\n"
    "      return false, path .. ': ' .. tostring(a) .. ' vs ' ..\n"
    "                    tostring(b)\n"
    "    end\n"
    "    return true\n"
    "  end\n"
    "  if getmetatable(a) ~= getmetatable(b) then\n"
    "    return false, path .. ': metatables differ'\n"
    "  end\n"
    "  for k, v in pairs(a) do\n"
    "    local ok, where = deep_equal(v, b[k], path .. '.' .. tostring(k))\n"
    "    if not ok then return false, where end\n"
    "  end\n"
    "  for k in pairs(b) do\n"
    "    if a[k] == nil then\n"
    "      return false, path .. '.' .. tostring(k) .. ': missing'\n"
    "    end\n"
    "  end\n"
    "  return true\n"
    "end\n";

/* Runs a Lua chunk; 0, or -1 with its message in errbuf. */
static int
run(const char *chunk)
{
    if (luaL_loadbuffer(L, chunk, strlen(chunk), "=test") != LUA_OK ||
        lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(errbuf, sizeof(errbuf), "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

#define RUN(chunk) ck_assert_msg(run(chunk) == 0, "%s", errbuf)

static void
setup(void)
{
    L = luaL_newstate();
    ck_assert_ptr_nonnull(L);
    luaL_openlibs(L);
    convert_init(L);
    lua_register(L, "decode", l_decode);
    lua_register(L, "encode", l_encode);
    lua_pushlightuserdata(L, NULL);
    lua_setglobal(L, "null");
    luaL_getmetatable(L, GRWHD_ARRAY_MT);
    lua_setglobal(L, "array_mt");
    errbuf[0] = '\0';
    RUN(prelude);
}

static void
teardown(void)
{
    lua_close(L);
    L = NULL;
    test_release();
}

/* Decodes s[0..n) in protected mode: 0 with the value on top of the
 * stack, or -1 with the message in errbuf and the stack as it was. */
static int
decode_n(const char *s, size_t n)
{
    char *copy = malloc(n ? n : 1);
    int top = lua_gettop(L), rc = 0;

    ck_assert_ptr_nonnull(copy);
    memcpy(copy, s, n);
    lua_pushcfunction(L, l_decode_raw);
    lua_pushlightuserdata(L, copy);
    lua_pushinteger(L, (lua_Integer)n);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        snprintf(errbuf, sizeof(errbuf), "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        rc = -1;
    }
    free(copy);
    ck_assert_int_eq(lua_gettop(L), top + (rc == 0));
    return rc;
}

static int
decode(const char *s)
{
    return decode_n(s, strlen(s));
}

#define DECODE(s) ck_assert_msg(decode(s) == 0, "%s: %s", s, errbuf)

START_TEST(convert_null_is_light_userdata_null)
{
    DECODE("null");
    ck_assert_int_eq(lua_type(L, -1), LUA_TLIGHTUSERDATA);
    ck_assert_ptr_null(lua_touserdata(L, -1));
    lua_pop(L, 1);
    RUN("local t = decode('{\"a\":null,\"b\":[null]}')\n"
        "eq(t.a, null)\n"
        "eq(rawequal(t.a, nil), false)\n"
        "eq(t.b[1], null)\n"
        "eq(#t.b, 1)\n");
}
END_TEST

START_TEST(convert_arrays_keep_order_and_metatable)
{
    RUN("local v = decode(' [3, 1, [2, \"x\", []], {\"k\":[true]}, false] ')\n"
        "eq(getmetatable(v), array_mt)\n"
        "eq(#v, 5)\n"
        "eq(v[1], 3) eq(v[2], 1) eq(v[5], false)\n"
        "eq(getmetatable(v[3]), array_mt)\n"
        "eq(v[3][1], 2) eq(v[3][2], 'x') eq(#v[3], 3)\n"
        "eq(getmetatable(v[3][3]), array_mt) eq(next(v[3][3]), nil)\n"
        "eq(getmetatable(v[4]), nil)\n"
        "eq(getmetatable(v[4].k), array_mt) eq(v[4].k[1], true)\n");
}
END_TEST

START_TEST(convert_objects_become_plain_tables)
{
    RUN("local v = decode('{\"a\":1,\"b\":{\"c\":\"d\"},\"\":2}')\n"
        "eq(getmetatable(v), nil)\n"
        "eq(v.a, 1) eq(v.b.c, 'd') eq(v[''], 2)\n"
        "local n = 0 for _ in pairs(v) do n = n + 1 end\n"
        "eq(n, 3)\n");
}
END_TEST

START_TEST(convert_large_integers_stay_exact)
{
    DECODE("9007199254740993");
    ck_assert(lua_isinteger(L, -1));
    ck_assert_int_eq(lua_tointeger(L, -1), 9007199254740993LL);
    lua_pop(L, 1);
    DECODE("9223372036854775807");
    ck_assert(lua_isinteger(L, -1));
    ck_assert_int_eq(lua_tointeger(L, -1), LUA_MAXINTEGER);
    lua_pop(L, 1);
    DECODE("-9223372036854775808");
    ck_assert(lua_isinteger(L, -1));
    ck_assert_int_eq(lua_tointeger(L, -1), LUA_MININTEGER);
    lua_pop(L, 1);
    RUN("local v = decode('[-0, 0, 42]')\n"
        "eq(math.type(v[1]), 'integer') eq(v[3], 42)\n");
}
END_TEST

START_TEST(convert_integer_past_range_becomes_float)
{
    DECODE("9223372036854775808");
    ck_assert(!lua_isinteger(L, -1));
    ck_assert_int_eq(lua_type(L, -1), LUA_TNUMBER);
    ck_assert_double_eq(lua_tonumber(L, -1), 9223372036854775808.0);
    lua_pop(L, 1);
    DECODE("-9223372036854775809");
    ck_assert(!lua_isinteger(L, -1));
    ck_assert_double_eq(lua_tonumber(L, -1), -9223372036854775808.0);
    lua_pop(L, 1);
}
END_TEST

START_TEST(convert_floats_decode)
{
    static const struct {
        const char *text;
        double want;
    } cases[] = {
        {"1.5", 1.5}, {"-0.25e2", -25.0}, {"1E3", 1000.0},
        {"2e-3", 0.002}, {"0.1", 0.1}, {"-1.0", -1.0}, {"1e+2", 100.0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        DECODE(cases[i].text);
        ck_assert_msg(!lua_isinteger(L, -1), "%s: integer", cases[i].text);
        ck_assert_double_eq(lua_tonumber(L, -1), cases[i].want);
        lua_pop(L, 1);
    }
}
END_TEST

static void
assert_string(const char *json, const char *want)
{
    size_t n;
    const char *got;

    DECODE(json);
    ck_assert_int_eq(lua_type(L, -1), LUA_TSTRING);
    got = lua_tolstring(L, -1, &n);
    ck_assert_msg(n == strlen(want) && memcmp(got, want, n) == 0,
                  "%s decoded to '%s', want '%s'", json, got, want);
    lua_pop(L, 1);
}

START_TEST(convert_unicode_escapes_become_utf8)
{
    assert_string("\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac");
    assert_string("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80");
    assert_string("\"x\\uD83D\\uDE00y\"", "x\xf0\x9f\x98\x80y");
    assert_string("\"\\uffff\"", "\xef\xbf\xbf");
}
END_TEST

START_TEST(convert_lone_surrogate_becomes_replacement)
{
    assert_string("\"a\\ud83db\"", "a\xef\xbf\xbd" "b");
    assert_string("\"\\ude00\"", "\xef\xbf\xbd");
    assert_string("\"\\ud83d\\u0041\"", "\xef\xbf\xbd" "A");
    assert_string("\"\\ud83d\"", "\xef\xbf\xbd");
    assert_string("\"\\ud83d\\ud83d\\ude00\"",
                  "\xef\xbf\xbd\xf0\x9f\x98\x80");
}
END_TEST

START_TEST(convert_raw_utf8_passes_through)
{
    assert_string("\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
                  "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    assert_string("\"tab\\there \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\"",
                  "tab\there \"q\" \\ / \b\f\n\r");
}
END_TEST

START_TEST(convert_decodes_nul_escape)
{
    DECODE("\"a\\u0000b\"");
    ck_assert_uint_eq(lua_rawlen(L, -1), 3);
    ck_assert_mem_eq(lua_tostring(L, -1), "a\0b", 3);
    lua_pop(L, 1);
}
END_TEST

/* Bad text, and the byte the error names (0: any). */
static const struct {
    const char *text;
    int byte;
} bad_json[] = {
    {"{", 2},
    {"[1,]", 4},
    {"tru", 1},
    {"\"\\x\"", 3},
    {"01", 2},
    {"[1 2]", 4},
    {"{\"a\":1,}", 8},
    {"", 0},
    {"   ", 0},
    {"{\"a\"}", 0},
    {"{a:1}", 0},
    {"\"abc", 0},
    {"\"a\nb\"", 0},
    {"\"\\u12\"", 0},
    {"1 2", 0},
    {"-", 0},
    {".5", 0},
    {"1e", 0},
    {"-01", 0},
    {"[", 0},
    {"nul", 0},
    {"True", 0},
    {"1.5.5", 0},
    {"[1]x", 0},
};

START_TEST(convert_rejects_bad_input_naming_byte)
{
    const char *text = bad_json[_i].text;
    char want[32];
    size_t n;

    ck_assert_msg(decode(text) == -1, "'%s' was accepted", text);
    ck_assert_msg(strncmp(errbuf, "JSON: ", 6) == 0, "%s", errbuf);
    ck_assert_msg(strstr(errbuf, " at byte ") != NULL, "'%s': %s", text,
                  errbuf);
    if (bad_json[_i].byte > 0) {
        snprintf(want, sizeof(want), " at byte %d", bad_json[_i].byte);
        n = strlen(errbuf);
        ck_assert_msg(n > strlen(want) &&
                          strcmp(errbuf + n - strlen(want), want) == 0,
                      "'%s': %s, want%s", text, errbuf, want);
    }
}
END_TEST

/* JSON wants a digit after the point; strtod alone takes "1.". */
START_TEST(convert_rejects_point_without_digits)
{
    ck_assert_msg(decode("1.") == -1, "'1.' was accepted");
    ck_assert_msg(decode("[1.e5]") == -1, "'1.e5' was accepted");
}
END_TEST

static char *
brackets(int n)
{
    char *s = test_keep(malloc((size_t)n * 2 + 1));

    ck_assert_ptr_nonnull(s);
    memset(s, '[', (size_t)n);
    memset(s + n, ']', (size_t)n);
    s[n * 2] = '\0';
    return s;
}

START_TEST(convert_takes_depth_max_and_round_trips_it)
{
    char *s = brackets(GRWHD_CONVERT_DEPTH_MAX);

    DECODE(s);
    lua_setglobal(L, "deep");
    lua_pushstring(L, s);
    lua_setglobal(L, "deep_text");
    RUN("eq(encode(deep), deep_text)");
}
END_TEST

START_TEST(convert_rejects_depth_past_max)
{
    char *s = brackets(GRWHD_CONVERT_DEPTH_MAX + 1);

    ck_assert_int_eq(decode(s), -1);
    ck_assert_str_eq(errbuf, "JSON: nesting too deep at byte 129");
    s = test_keep(malloc(100000));
    memset(s, '[', 100000);
    ck_assert_int_eq(decode_n(s, 100000), -1);
    ck_assert_str_eq(errbuf, "JSON: nesting too deep at byte 129");
    for (int i = 0; i < 100000; i += 5)
        memcpy(s + i, "{\"a\":", 5);
    ck_assert_int_eq(decode_n(s, 100000), -1);
    ck_assert_msg(strstr(errbuf, "nesting too deep") != NULL, "%s", errbuf);
}
END_TEST

/* Whatever encode writes, decode reads: both take 128 levels of arrays
 * or objects, and both refuse 129. */
START_TEST(convert_encode_and_decode_agree_on_depth)
{
    RUN("local function nest(n, wrap)\n"
        "  local t = {}\n"
        "  for _ = 2, n do t = wrap(t) end\n"
        "  return t\n"
        "end\n"
        "local wraps = { function(t) return {t} end,\n"
        "                function(t) return {k = t} end }\n"
        "for _, wrap in ipairs(wraps) do\n"
        "  local s = encode(nest(128, wrap))\n"
        "  eq(encode(decode(s)), s)\n"
        "  fails(nest(129, wrap), 'nesting too deep')\n"
        "  local deeper = wrap(decode(s))\n"
        "  fails(deeper, 'nesting too deep')\n"
        "end\n"
        "local ok, e = pcall(decode, ('['):rep(129) .. (']'):rep(129))\n"
        "eq(ok, false)\n"
        "eq(e, 'JSON: nesting too deep at byte 129')\n");
}
END_TEST

/* Every fixture: decode, encode, decode again gives the same value, and
 * another parser reads the encoded text as the original document. */
START_TEST(convert_round_trips_fixtures)
{
    char pattern[4096];
    glob_t g;

    snprintf(pattern, sizeof(pattern), "%s/*.json", test_fixture_dir());
    ck_assert_int_eq(glob(pattern, 0, NULL, &g), 0);
    ck_assert_uint_ge(g.gl_pathc, 10);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        size_t n;
        char *text = test_keep(test_read_file(g.gl_pathv[i], &n));
        const char *out;
        cJSON *want, *got;

        ck_assert_ptr_nonnull(text);
        ck_assert_msg(decode_n(text, n) == 0, "%s: %s", g.gl_pathv[i],
                      errbuf);
        lua_setglobal(L, "doc");
        ck_assert_msg(run("out = encode(doc)\n"
                          "local ok, where = deep_equal(doc, decode(out))\n"
                          "if not ok then error(where) end\n") == 0,
                      "%s: %s", g.gl_pathv[i], errbuf);
        lua_getglobal(L, "out");
        out = lua_tostring(L, -1);
        want = cJSON_Parse(text);
        got = cJSON_Parse(out);
        ck_assert_msg(got != NULL, "%s: encoded text does not parse: %s",
                      g.gl_pathv[i], out);
        ck_assert_msg(cJSON_Compare(want, got, 1), "%s: encoded as %s",
                      g.gl_pathv[i], out);
        ck_assert_ptr_null(strchr(out, '\n'));
        cJSON_Delete(want);
        cJSON_Delete(got);
        lua_pop(L, 1);
    }
    globfree(&g);
}
END_TEST

START_TEST(convert_encodes_empty_tables)
{
    RUN("eq(encode(decode('[]')), '[]')\n"
        "eq(encode(decode(' { } ')), '{}')\n"
        "eq(encode({}), '{}')\n"
        "eq(encode({a = decode('[]')}), '{\"a\":[]}')\n");
}
END_TEST

START_TEST(convert_encodes_sequences_and_scalars)
{
    RUN("eq(encode({1, 2, 3}), '[1,2,3]')\n"
        "eq(encode({'a', {true, false}, null}), '[\"a\",[true,false],null]')\n"
        "eq(encode({k = 'v'}), '{\"k\":\"v\"}')\n"
        "eq(encode(nil), 'null') eq(encode(null), 'null')\n"
        "eq(encode(9007199254740993), '9007199254740993')\n"
        "eq(encode(math.maxinteger), '9223372036854775807')\n"
        "eq(encode(math.mininteger), '-9223372036854775808')\n"
        "eq(encode(1.5), '1.5') eq(encode(-0.25), '-0.25')\n"
        "eq(decode(encode(0.1)), 0.1)\n"
        "eq(decode(encode(1 / 3)), 1 / 3)\n"
        "eq(encode({[3] = 'c', [1] = 'a', [2] = 'b'}), '[\"a\",\"b\",\"c\"]')\n"
        "eq(encode({[2] = 'b'}), '{\"2\":\"b\"}')\n");
}
END_TEST

START_TEST(convert_escapes_strings)
{
    RUN("eq(encode('a\"b\\\\c'), [[\"a\\\"b\\\\c\"]])\n"
        "eq(encode('\\n\\r\\t'), [[\"\\n\\r\\t\"]])\n"
        "eq(encode('\\1\\8\\31\\0'), [[\"\\u0001\\u0008\\u001f\\u0000\"]])\n"
        "eq(encode('caf\\u{e9} \\u{1F600}'), '\"caf\\u{e9} \\u{1F600}\"')\n"
        "eq(encode('/ \\127'), '\"/ \\127\"')\n"
        "local s = 'q\"\\\\\\n\\0\\31x'\n"
        "eq(decode(encode(s)), s)\n"
        "eq(encode({['k\"'] = 1}), [[{\"k\\\"\":1}]])\n");
}
END_TEST

START_TEST(convert_encode_refuses_nan_and_infinity)
{
    RUN("fails(0/0, 'is not a JSON number')\n"
        "fails(math.huge, 'is not a JSON number')\n"
        "fails(-math.huge, 'is not a JSON number')\n"
        "fails({1, {x = 0/0}}, 'is not a JSON number')\n");
}
END_TEST

START_TEST(convert_encode_refuses_values_json_cannot_hold)
{
    RUN("fails(print, 'function is not JSON')\n"
        "fails({f = function() end}, 'function is not JSON')\n"
        "fails(coroutine.create(print), 'thread is not JSON')\n"
        "fails(io.stdout, 'userdata is not JSON')\n"
        "fails({[1.5] = 1}, 'table key of type number')\n"
        "fails({[true] = 1}, 'table key of type boolean')\n");
}
END_TEST

START_TEST(convert_encode_refuses_cycles)
{
    RUN("local t = {} t.self = t\n"
        "fails(t, 'nesting too deep')\n"
        "local a = {} a[1] = {a}\n"
        "fails(a, 'nesting too deep')\n"
        "eq(encode({1}), '[1]')\n");
}
END_TEST

/* ------------------------------------------------------------------ */
/* runtime: the handler state (kept here: the build lists no file of   */
/* its own for it)                                                      */

static char *rdir, *script;
static struct lrt *rt;
static struct gerr rerr;

static void
rt_setup(void)
{
    rdir = test_tmpdir();
    script = test_path(rdir, "handler.lua");
    rt = NULL;
    memset(&rerr, 0, sizeof(rerr));
}

static void
rt_teardown(void)
{
    lrt_free(rt);
    rt = NULL;
    free(script);
    script = NULL;
    test_rmtree(rdir);
    free(rdir);
    rdir = NULL;
    test_release();
}

static struct lrt *
load(const char *src, double timeout, size_t memory)
{
    struct lrt_conf conf = {script, timeout, memory};

    test_write_file(script, src, strlen(src));
    memset(&rerr, 0, sizeof(rerr));
    return lrt_new(&conf, 0, &rerr);
}

static void
load_ok(const char *src, double timeout, size_t memory)
{
    rt = load(src, timeout, memory);
    ck_assert_msg(rt != NULL, "lrt_new: %s", rerr.msg);
}

static int
call_json(const char *type, const char *json)
{
    struct spool_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.id = 42;
    ev.received_at = 1700000000.5;
    ev.type = (char *)type;
    ev.contact = "";
    ev.json = (char *)json;
    ev.len = strlen(json);
    ev.batch_index = 0;
    ev.batch_size = 1;
    memset(&rerr, 0, sizeof(rerr));
    return lrt_call(rt, &ev, &rerr);
}

static int
call(const char *type)
{
    return call_json(type, "{}");
}

/* The script's global `seen`, read through its report handler, which
 * raises it as an error message (handlers return nothing to C). */
static const char *
seen(void)
{
    static char buf[512];
    size_t n;

    ck_assert_int_eq(call("report"), -1);
    ck_assert_msg(strncmp(rerr.msg, "seen=", 5) == 0, "%s", rerr.msg);
    n = strcspn(rerr.msg + 5, "\n");
    snprintf(buf, sizeof(buf), "%.*s", (int)n, rerr.msg + 5);
    return buf;
}

#define REPORT                                                            \
    "report = function()\n"                                               \
    "  error('seen=' .. tostring(seen) .. ' inits=' .. tostring(inits), "  \
    "0)\n"                                                                \
    "end,\n"

static const char table_script[] =
    "local n = 0\n"
    "return {\n"
    "init = function() inits = (inits or 0) + 1 end,\n"
    "contact_added = function(ev, meta)\n"
    "  n = n + 1\n"
    "  seen = string.format('%s:%s:%d/%d:%s:%s:%d', meta.type,\n"
    "    ev.contact.contactId, meta.batch_index, meta.batch_size,\n"
    "    tostring(meta.webhook_id), meta.id, n)\n"
    "end,\n"
    "default = function(ev, meta) seen = 'default:' .. meta.type end,\n"
    REPORT
    "}\n";

START_TEST(runtime_calls_handler_for_type)
{
    char *json = test_keep(test_fixture("contact_added.json", NULL));

    load_ok(table_script, 0, 0);
    ck_assert_str_eq(seen(), "nil inits=1");
    ck_assert_int_eq(call_json("contact_added", json), 0);
    ck_assert_str_eq(seen(), "contact_added:Hn5Wc:1/1:nil:42:1 inits=1");
    ck_assert_int_eq(call_json("contact_added", json), 0);
    ck_assert_str_eq(seen(), "contact_added:Hn5Wc:1/1:nil:42:2 inits=1");
}
END_TEST

START_TEST(runtime_uses_default_for_unknown_and_empty_type)
{
    load_ok(table_script, 0, 0);
    ck_assert_int_eq(call("contact_mystery"), 0);
    ck_assert_str_eq(seen(), "default:contact_mystery inits=1");
    ck_assert_int_eq(call(""), 0);
    ck_assert_str_eq(seen(), "default: inits=1");
    /* init and close are the script's own hooks, never event handlers. */
    ck_assert_int_eq(call("init"), 0);
    ck_assert_str_eq(seen(), "default:init inits=1");
    ck_assert_int_eq(call("close"), 0);
    ck_assert_str_eq(seen(), "default:close inits=1");
}
END_TEST

START_TEST(runtime_returns_1_when_no_function_takes_type)
{
    load_ok("seen = 0\n"
            "return { a = function() seen = seen + 1 end, b = 'text',\n"
            REPORT "}\n",
            0, 0);
    ck_assert_int_eq(call("other"), 1);
    ck_assert_int_eq(call("b"), 1);
    ck_assert_int_eq(call(""), 1);
    ck_assert_int_eq(call("a"), 0);
    ck_assert_str_eq(seen(), "1 inits=nil");
}
END_TEST

START_TEST(runtime_global_functions_skip_standard_names)
{
    load_ok("function contact_added(ev, meta)\n"
            "  seen = 'global:' .. meta.type\n"
            "end\n"
            "function default(ev, meta) seen = 'default:' .. meta.type end\n"
            "function print() seen = 'print' end\n"
            "local function hidden() seen = 'hidden' end\n"
            "function report()\n"
            "  error('seen=' .. tostring(seen), 0)\n"
            "end\n",
            0, 0);
    ck_assert_int_eq(call("contact_added"), 0);
    ck_assert_str_eq(seen(), "global:contact_added");
    ck_assert_int_eq(call("print"), 0);
    ck_assert_str_eq(seen(), "default:print");
    ck_assert_int_eq(call("require"), 0);
    ck_assert_str_eq(seen(), "default:require");
    ck_assert_int_eq(call("tostring"), 0);
    ck_assert_str_eq(seen(), "default:tostring");
    ck_assert_int_eq(call("hidden"), 0);
    ck_assert_str_eq(seen(), "default:hidden");
}
END_TEST

START_TEST(runtime_syntax_error_names_file_and_line)
{
    char want[4200];

    rt = load("return {\n"
              "  a = function()\n"
              "    local = 1\n"
              "  end,\n"
              "}\n",
              0, 0);
    ck_assert_ptr_null(rt);
    snprintf(want, sizeof(want), "%s:3:", script);
    ck_assert_msg(strncmp(rerr.msg, want, strlen(want)) == 0, "%s",
                  rerr.msg);
}
END_TEST

START_TEST(runtime_load_error_names_line_with_traceback)
{
    char want[4200];

    rt = load("local x = 1\nerror('boom')\n", 0, 0);
    ck_assert_ptr_null(rt);
    snprintf(want, sizeof(want), "%s:2: boom\nstack traceback:", script);
    ck_assert_msg(strncmp(rerr.msg, want, strlen(want)) == 0, "%s",
                  rerr.msg);
}
END_TEST

START_TEST(runtime_refuses_script_returning_non_table)
{
    rt = load("return 42\n", 0, 0);
    ck_assert_ptr_null(rt);
    ck_assert_msg(strstr(rerr.msg, "the script returned a number") != NULL,
                  "%s", rerr.msg);
}
END_TEST

START_TEST(runtime_init_error_fails_load)
{
    rt = load("return { init = function() error('no database') end }\n", 0,
              0);
    ck_assert_ptr_null(rt);
    ck_assert_msg(strstr(rerr.msg, ":1: no database") != NULL &&
                      strstr(rerr.msg, "stack traceback:") != NULL,
                  "%s", rerr.msg);
}
END_TEST

static int
dump_writer(lua_State *L1, const void *p, size_t n, void *ud)
{
    (void)L1;
    return fwrite(p, 1, n, ud) == n ? 0 : 1;
}

/* Scripts load as text only: a precompiled chunk is refused. */
START_TEST(runtime_refuses_binary_chunk)
{
    lua_State *T = luaL_newstate();
    FILE *f;
    struct lrt_conf conf = {NULL, 0, 0};

    ck_assert_int_eq(luaL_loadstring(T, "return { a = print }"), LUA_OK);
    f = fopen(script, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(lua_dump(T, dump_writer, f, 0), 0);
    fclose(f);
    lua_close(T);
    conf.script = script;
    rt = lrt_new(&conf, 0, &rerr);
    ck_assert_ptr_null(rt);
    ck_assert_msg(strstr(rerr.msg, "binary chunk") != NULL, "%s", rerr.msg);
}
END_TEST

START_TEST(runtime_handler_error_gives_traceback)
{
    char want[4200];

    load_ok("local function inner(ev) return ev.missing.field end\n"
            "return { boom = function(ev) inner(ev) end,\n"
            "  odd = function() error({}) end }\n",
            0, 0);
    ck_assert_int_eq(call("boom"), -1);
    snprintf(want, sizeof(want), "%s:1: attempt to index a nil value",
             script);
    ck_assert_msg(strncmp(rerr.msg, want, strlen(want)) == 0, "%s",
                  rerr.msg);
    ck_assert_msg(strstr(rerr.msg, "\nstack traceback:\n") != NULL, "%s",
                  rerr.msg);
    ck_assert_msg(strstr(rerr.msg, "inner") != NULL, "%s", rerr.msg);
    ck_assert_int_eq(call("odd"), -1);
    ck_assert_msg(strncmp(rerr.msg, "(error object is a table value)", 31) ==
                      0,
                  "%s", rerr.msg);
}
END_TEST

START_TEST(runtime_handler_gets_bad_event_json_as_error)
{
    load_ok("return { default = function() seen = 'ran' end }\n", 0, 0);
    ck_assert_int_eq(call_json("x", "{\"a\":"), -1);
    ck_assert_msg(strstr(rerr.msg, "JSON: unexpected end at byte 6") != NULL,
                  "%s", rerr.msg);
}
END_TEST

/*
 * Runs type, which must stop once past the 0.2 s budget.  The message
 * is kept for timeout_msg_ok, checked last so a wrong message does not
 * hide what the rest of a test shows.
 */
static char timeout_msg[512];

static void
assert_times_out(const char *type)
{
    double t0 = util_mono(), dt;

    ck_assert_int_eq(call(type), -1);
    dt = util_mono() - t0;
    ck_assert_msg(dt >= 0.19 && dt < 3.0, "stopped after %.3f s: %s", dt,
                  rerr.msg);
    snprintf(timeout_msg, sizeof(timeout_msg), "%s", rerr.msg);
}

static void
assert_timeout_msg(void)
{
    ck_assert_msg(strncmp(timeout_msg, "handler timed out after 0.2 s",
                          29) == 0,
                  "%s", timeout_msg);
}

static const char spin_script[] =
    "return {\n"
    "spin = function() while true do end end,\n"
    "spin_pcall = function()\n"
    "  while true do pcall(function() while true do end end) end\n"
    "end,\n"
    "quick = function() seen = 'quick' end,\n"
    REPORT
    "}\n";

START_TEST(runtime_timeout_stops_busy_loop)
{
    load_ok(spin_script, 0.2, 0);
    assert_times_out("spin");
    /* The budget is per call: the state runs the next handler. */
    ck_assert_int_eq(call("quick"), 0);
    ck_assert_str_eq(seen(), "quick inits=nil");
    assert_times_out("spin");
    assert_timeout_msg();
}
END_TEST

START_TEST(runtime_timeout_survives_pcall_in_script)
{
    load_ok(spin_script, 0.2, 0);
    assert_times_out("spin_pcall");
    ck_assert_int_eq(call("quick"), 0);
    ck_assert_str_eq(seen(), "quick inits=nil");
    assert_timeout_msg();
}
END_TEST

/*
 * A coroutine made while loading runs on its own lua_State; the budget
 * must reach it too.  Its loop ends by itself after 2 s of CPU, so a
 * missing budget fails the test instead of hanging it.
 */
START_TEST(runtime_timeout_stops_coroutine_made_at_load)
{
    load_ok("local co = coroutine.wrap(function()\n"
            "  local t0 = os.clock()\n"
            "  while os.clock() - t0 < 2 do end\n"
            "end)\n"
            "return { spin = function() co() end }\n",
            0.2, 0);
    assert_times_out("spin");
    assert_timeout_msg();
}
END_TEST

START_TEST(runtime_memory_limit_fails_handler_then_recovers)
{
    load_ok("return {\n"
            "hog = function()\n"
            "  local t, s = {}, string.rep('x', 1 << 20)\n"
            "  for i = 1, 64 do t[i] = s .. i end\n"
            "  seen = 'hog finished'\n"
            "end,\n"
            "small = function()\n"
            "  local t = {}\n"
            "  for i = 1, 100000 do t[i] = i end\n"
            "  seen = #t\n"
            "end,\n"
            REPORT
            "}\n",
            0, 8u << 20);
    ck_assert_int_eq(call("hog"), -1);
    ck_assert_msg(strstr(rerr.msg, "not enough memory") != NULL, "%s",
                  rerr.msg);
    ck_assert_int_eq(call("small"), 0);
    ck_assert_str_eq(seen(), "100000 inits=nil");
    ck_assert_int_eq(call("hog"), -1);
    ck_assert_int_eq(call("small"), 0);
}
END_TEST

Suite *
convert_suite(void)
{
    Suite *s = suite_create("convert");
    TCase *tc = tcase_create("decode");
    int nbad = (int)(sizeof(bad_json) / sizeof(bad_json[0]));

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, convert_null_is_light_userdata_null);
    tcase_add_test(tc, convert_arrays_keep_order_and_metatable);
    tcase_add_test(tc, convert_objects_become_plain_tables);
    tcase_add_test(tc, convert_large_integers_stay_exact);
    tcase_add_test(tc, convert_integer_past_range_becomes_float);
    tcase_add_test(tc, convert_floats_decode);
    tcase_add_test(tc, convert_unicode_escapes_become_utf8);
    tcase_add_test(tc, convert_lone_surrogate_becomes_replacement);
    tcase_add_test(tc, convert_raw_utf8_passes_through);
    tcase_add_test(tc, convert_decodes_nul_escape);
    tcase_add_loop_test(tc, convert_rejects_bad_input_naming_byte, 0, nbad);
    tcase_add_test(tc, convert_rejects_point_without_digits);
    tcase_add_test(tc, convert_takes_depth_max_and_round_trips_it);
    tcase_add_test(tc, convert_rejects_depth_past_max);
    suite_add_tcase(s, tc);

    tc = tcase_create("encode");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, convert_round_trips_fixtures);
    tcase_add_test(tc, convert_encodes_empty_tables);
    tcase_add_test(tc, convert_encodes_sequences_and_scalars);
    tcase_add_test(tc, convert_escapes_strings);
    tcase_add_test(tc, convert_encode_refuses_nan_and_infinity);
    tcase_add_test(tc, convert_encode_refuses_values_json_cannot_hold);
    tcase_add_test(tc, convert_encode_refuses_cycles);
    tcase_add_test(tc, convert_encode_and_decode_agree_on_depth);
    suite_add_tcase(s, tc);
    return s;
}

Suite *
runtime_suite(void)
{
    Suite *s = suite_create("runtime");
    TCase *tc = tcase_create("load");

    tcase_add_checked_fixture(tc, rt_setup, rt_teardown);
    tcase_add_test(tc, runtime_calls_handler_for_type);
    tcase_add_test(tc, runtime_uses_default_for_unknown_and_empty_type);
    tcase_add_test(tc, runtime_returns_1_when_no_function_takes_type);
    tcase_add_test(tc, runtime_global_functions_skip_standard_names);
    tcase_add_test(tc, runtime_syntax_error_names_file_and_line);
    tcase_add_test(tc, runtime_load_error_names_line_with_traceback);
    tcase_add_test(tc, runtime_refuses_script_returning_non_table);
    tcase_add_test(tc, runtime_init_error_fails_load);
    tcase_add_test(tc, runtime_refuses_binary_chunk);
    tcase_add_test(tc, runtime_handler_error_gives_traceback);
    tcase_add_test(tc, runtime_handler_gets_bad_event_json_as_error);
    suite_add_tcase(s, tc);

    /* Runaway handlers: each case spends a fraction of a second. */
    tc = tcase_create("limits");
    tcase_add_checked_fixture(tc, rt_setup, rt_teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, runtime_timeout_stops_busy_loop);
    tcase_add_test(tc, runtime_timeout_survives_pcall_in_script);
    tcase_add_test(tc, runtime_timeout_stops_coroutine_made_at_load);
    tcase_add_test(tc, runtime_memory_limit_fails_handler_then_recovers);
    suite_add_tcase(s, tc);
    return s;
}
