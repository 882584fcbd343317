# Runs on every boot, before main.py. Kept minimal: a fault here leaves the board
# without its REPL on some ports.
import gc


def _finish_deploy():
    # A deploy cut short (cable, power) leaves `.deploy/`. With its plan, written
    # only after every staged file checked out, the renames are redone; without
    # one the staged files are dropped. Either way one whole firmware boots,
    # never a mix (ioconnect_host/deploy.py has the design).
    import os

    try:
        names = os.listdir(".deploy")
    except OSError:
        return
    if "plan" in names:
        # "P <staged> <path>": rename; "D <path>": delete (host: deploy._plan).
        f = open(".deploy/plan")
        while True:
            line = f.readline()
            if not line:
                break
            rest = line[2:].rstrip("\n")
            if line[0] == "P":
                src, dst = rest.split(" ", 1)
                src = ".deploy/" + src
                try:
                    os.stat(src)
                except OSError:
                    continue  # renamed before the cut
                d = ""
                for part in dst.split("/")[:-1]:
                    d += part
                    try:
                        os.mkdir(d)
                    except OSError:
                        pass  # exists
                    d += "/"
                try:
                    os.rename(src, dst)
                except OSError:
                    os.remove(dst)  # FAT does not rename over a file
                    os.rename(src, dst)
            elif line[0] == "D":
                try:
                    os.remove(rest)
                except OSError:
                    pass  # removed before the cut
        f.close()
    for name in os.listdir(".deploy"):
        os.remove(".deploy/" + name)
    os.rmdir(".deploy")


while True:
    try:
        _finish_deploy()
        break
    except KeyboardInterrupt:
        pass  # a host's Ctrl-C must not stop it halfway: each step is safe to redo
    except Exception as e:  # noqa: BLE001 - the REPL must come up to repair a board
        print("ioconnect: finishing the last deploy failed:", e)
        break
del _finish_deploy
gc.collect()
