# Run by a `bash` tool call in hardening_secrets.rs: tries every route from a tool process to a
# provider key and prints one line per attempt. It does not know the keys; it looks for their
# common prefix, so the test can fail on any "LEAK" line. Routes: the environment block and the
# command line of every ancestor; the memory (/proc/PID/mem) and ptrace of every crushd/crushctl
# ancestor (the tool guard's comm is "exe": it runs as /proc/self/exe); the descriptors the shell
# and the guard hold.
import ctypes, errno, os

NEEDLE = b"sk-probe-"
OURS = ("crushd", "crushctl", "exe")
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def report(route, pid, read):
    name = comm(pid)
    try:
        data = read(pid)
    except OSError as e:
        print(f"{route} {pid} {name}: denied {errno.errorcode.get(e.errno, e.errno)}")
        return
    i = data.find(NEEDLE)
    if i >= 0:
        print(f"{route} {pid} {name}: LEAK {data[i:i + 40]!r}")
    else:
        print(f"{route} {pid} {name}: clean {len(data)} bytes")


def read_file(what):
    def read(pid):
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read()
    return read


def read_mem(pid):
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    found = b""
    total = 0
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps.splitlines():
            fields = line.split()
            if fields[1][0] != "r" or line.endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if hi - lo > 512 << 20:
                continue
            try:
                mem.seek(lo)
                chunk = mem.read(hi - lo)
            except OSError:
                continue
            total += len(chunk)
            i = chunk.find(NEEDLE)
            if i >= 0:
                found = chunk[i:i + 40]
                break
    # Nothing found: return something of the size read, without the needle.
    return found if found else b"\0" * min(total, 1)


def ptrace(pid):
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    os.waitpid(pid, 0x40000000)  # __WALL
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    return NEEDLE + b" (attached with ptrace: its whole memory is open)"


def links(pid):
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}={os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except FileNotFoundError:
            pass  # closed since (the listing's own descriptor)
        except OSError as e:
            out.append(f"{fd}=?{e.errno}")
    return out


# What this process inherited (bash runs a single command with exec, so it is the tool
# process itself): every descriptor but the directory being listed.
own = links("self")
print("fds tool", " ".join(l for l in own if "/proc/" not in l.split("=", 1)[1]))
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith(("CapEff", "CapPrm", "NoNewPrivs", "Uid")):
            print("status", " ".join(line.split()))

shell = os.getppid()
pid = shell
while pid > 1:
    report("environ", pid, read_file("environ"))
    report("cmdline", pid, read_file("cmdline"))
    if comm(pid) in OURS:
        report("mem", pid, read_mem)
        report("ptrace", pid, ptrace)
        try:
            fds = links(pid)
            # Listing may be allowed while every link is refused: nothing can be opened.
            if fds and all("=?" in l for l in fds):
                raise PermissionError(errno.EACCES, "every descriptor refused")
            print(f"fds {pid} {comm(pid)}:", " ".join(fds))
        except OSError as e:
            print(f"fds {pid} {comm(pid)}: denied {errno.errorcode.get(e.errno, e.errno)}")
    pid = parent(pid)
print("probe done")
