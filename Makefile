# grwhd - GetResponse webhook daemon.  See README.md.
.SUFFIXES:

PKGS      = lua5.4 libmicrohttpd gnutls libcjson sqlite3 libcurl
PREFIX   ?= /usr/local
BUILD    ?= build
CC       ?= cc
CFLAGS   ?= -O2 -g
WERROR   ?= 0

WARN = -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes \
       -Wmissing-prototypes -Wpointer-arith -Wundef -Wvla -Wcast-align \
       -Wnull-dereference -Wdouble-promotion
ifeq ($(WERROR),1)
WARN += -Werror
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -pthread -MMD -MP $(WARN) $(PKG_CFLAGS) \
             $(CFLAGS)
ALL_LIBS   = $(PKG_LIBS) -pthread -lm

CORE_SRC = core/util.c core/log.c core/auth.c core/batch.c core/spool.c \
           core/dedupe.c core/spoolcmd.c core/legacy.c core/keyset.c \
           core/watch.c core/metrics.c core/admin.c core/tls.c \
           core/intake.c core/dispatch.c core/server.c core/config.c \
           lua/convert.c lua/lib.c lua/runtime.c lua/http.c lua/types.c
MAIN_SRC = core/main.c
TEST_SRC = tests/check_main.c tests/check_auth.c tests/check_batch.c \
           tests/check_convert.c tests/check_spool.c tests/check_log.c \
           tests/check_config.c tests/check_delivery.c tests/check_tls.c

CORE_OBJ = $(CORE_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ = $(MAIN_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ = $(TEST_SRC:%.c=$(BUILD)/%.o)

BIN      = $(BUILD)/grwhd
UNIT     = $(BUILD)/check_grwhd

.PHONY: all run test unit e2e sanitize valgrind lint bench install uninstall clean deps

all: grwhd

# Renamed into place, so a running grwhd does not stop the build.
grwhd: $(BIN)
	cp $(BIN) $@.tmp && mv -f $@.tmp $@

$(BIN): $(CORE_OBJ) $(MAIN_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(ALL_LIBS) $(LDFLAGS)

$(UNIT): $(CORE_OBJ) $(TEST_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(ALL_LIBS) $(CHECK_LIBS) $(LDFLAGS)

$(BUILD)/tests/%.o: tests/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

# Installs the Debian packages (when root and something is missing).
deps:
	@scripts/install-deps.sh

# Builds, then serves examples/handler.lua over HTTPS on 127.0.0.1:8080.
run: deps
	@$(MAKE) --no-print-directory all
	@scripts/dev-run.sh

# Installs what is missing, then runs the unit and end-to-end tests.
test: deps
	@$(MAKE) --no-print-directory unit e2e

unit: $(UNIT)
	$(UNIT)

e2e: $(BIN)
	GRWHD_BIN=$(abspath $(BIN)) python3 tests/e2e/run.py

# The same tests under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize: deps
	$(MAKE) --no-print-directory BUILD=build/san WERROR=$(WERROR) \
	  CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	  -fno-sanitize-recover=undefined" unit e2e

# The unit tests in one process under valgrind: leaks and bad reads that
# the sanitizer build does not see (uninitialised memory).
valgrind: deps $(UNIT)
	CK_FORK=no valgrind -q --error-exitcode=9 --leak-check=full \
	  --errors-for-leak-kinds=definite $(UNIT)

lint:
	@scripts/lint.sh

bench: all $(BUILD)/bench_lua
	@scripts/bench.sh

$(BUILD)/bench_lua: $(CORE_OBJ) $(BUILD)/tests/bench_lua.o
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(ALL_LIBS) $(LDFLAGS)

SYSTEMD_DIR ?= $(PREFIX)/lib/systemd/system
MAN_DIR     ?= $(PREFIX)/share/man/man1

# The unit and the man page are written for /usr/local; the installed
# copies name the paths this install really uses.
INSTALL_SED = sed -e 's|/usr/local/lib/systemd/system|$(SYSTEMD_DIR)|g' \
                  -e 's|/usr/local/|$(PREFIX)/|g'

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(MAN_DIR) \
	  $(DESTDIR)$(PREFIX)/share/grwhd/examples/router \
	  $(DESTDIR)$(PREFIX)/share/doc/grwhd $(DESTDIR)$(SYSTEMD_DIR)
	install -m 755 grwhd $(DESTDIR)$(PREFIX)/bin/grwhd
	$(INSTALL_SED) docs/grwhd.1 > $(DESTDIR)$(MAN_DIR)/grwhd.1
	chmod 644 $(DESTDIR)$(MAN_DIR)/grwhd.1
	install -m 644 examples/*.lua $(DESTDIR)$(PREFIX)/share/grwhd/examples/
	install -m 644 examples/router/*.lua \
	  $(DESTDIR)$(PREFIX)/share/grwhd/examples/router/
	install -m 644 docs/lua.md README.md $(DESTDIR)$(PREFIX)/share/doc/grwhd/
	$(INSTALL_SED) scripts/grwhd.service \
	  > $(DESTDIR)$(SYSTEMD_DIR)/grwhd.service
	chmod 644 $(DESTDIR)$(SYSTEMD_DIR)/grwhd.service

# Removes what install lays down; the shared folders it may have created
# (bin, man1, the systemd folder) stay.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/grwhd
	rm -f $(DESTDIR)$(MAN_DIR)/grwhd.1
	rm -f $(DESTDIR)$(SYSTEMD_DIR)/grwhd.service
	rm -rf $(DESTDIR)$(PREFIX)/share/grwhd $(DESTDIR)$(PREFIX)/share/doc/grwhd

clean:
	rm -rf build grwhd

-include $(CORE_OBJ:.o=.d) $(MAIN_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
