# A sandboxed child trying to type a command into a terminal: TIOCSTI on every terminal
# it may hold (stdin, stdout, /dev/tty, an inherited fd 50, the operator's terminal by
# name), with the request's high bits set, and TIOCLINUX. Writes one "name result" line
# per attempt to argv[1] ("-" for stdout), then what its own stdin holds (one line).
# argv[2]: the file the typed command would create; argv[3] (optional): the operator's
# terminal, by path.
import ctypes, errno, os, sys

libc = ctypes.CDLL(None, use_errno=True)
TIOCSTI, TIOCLINUX, TIOCL_GETSHIFTSTATE = 0x5412, 0x541C, 6
line = ("touch " + sys.argv[2] + "\n").encode()
results = []


def outcome(ret):
    return "ok" if ret == 0 else errno.errorcode[ctypes.get_errno()]


def inject(name, fd, request=TIOCSTI):
    ret = 0
    for byte in line:
        ret = libc.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(ctypes.c_char(byte)))
        if ret != 0:
            break
    results.append((name, outcome(ret)))


def inject_path(name, path):
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        results.append((name, errno.errorcode[e.errno]))
        return
    inject(name, fd)
    os.close(fd)


inject("stdin", 0)
inject("stdout", 1)
inject("high_bits", 0, TIOCSTI | (1 << 32))
inject("fd50", 50)
inject_path("dev_tty", "/dev/tty")
if len(sys.argv) > 3:
    inject_path("by_name", sys.argv[3])
shift = ctypes.c_char(TIOCL_GETSHIFTSTATE)
results.append(("tioclinux", outcome(libc.ioctl(0, ctypes.c_ulong(TIOCLINUX), ctypes.byref(shift)))))

# One line of what reached this child's own input (a terminal in canonical mode gives
# one line per read).
os.set_blocking(0, False)
try:
    own = os.read(0, 4096).decode().strip() or "none"
except OSError:
    own = "none"
os.set_blocking(0, True)
results.append(("own_input", own))

text = "".join(f"{name} {value}\n" for name, value in results)
if sys.argv[1] == "-":
    sys.stdout.write(text)
else:
    with open(sys.argv[1], "w") as out:
        out.write(text)
