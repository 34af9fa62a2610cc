/* lib.h - the grwhd module that scripts see. */
#ifndef GRWHD_LIB_H
#define GRWHD_LIB_H

#include <lua.h>

/* lua_CFunction for luaL_requiref: pushes the module table. */
int lib_open(lua_State *L);

#endif
