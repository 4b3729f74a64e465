"""Print an Open Inventor file's triangles as Wavefront OBJ text (world coordinates: every transform applied).

Run by the system Python, never imported: Coin3D's Python binding (pivy) is a Debian package, python3-pivy, not a
PyPI wheel, so `data3d.inventor` calls this file as `/usr/bin/python3 inventor_to_obj.py FILE`. It needs pivy only.
Exit status 2 with one line on stderr when the file is not an Inventor scene or holds no triangles.
"""

import sys

from pivy import coin


def main(path: str) -> int:
    coin.SoDB.init()
    source = coin.SoInput()
    if not source.openFile(path):
        print(f"{path}: cannot open", file=sys.stderr)
        return 2
    root = coin.SoDB.readAll(source)
    if root is None:
        print(f"{path}: not an Open Inventor scene", file=sys.stderr)
        return 2
    lines, count = [], 0

    def triangle(_, action, *corners):
        nonlocal count
        matrix = action.getModelMatrix()
        for corner in corners:
            x, y, z = matrix.multVecMatrix(corner.getPoint()).getValue()
            lines.append(f"v {x:.6g} {y:.6g} {z:.6g}")
        lines.append(f"f {count + 1} {count + 2} {count + 3}")
        count += 3

    action = coin.SoCallbackAction()
    action.addTriangleCallback(coin.SoShape.getClassTypeId(), triangle, None)
    action.apply(root)
    if not count:
        print(f"{path}: the scene holds no triangles", file=sys.stderr)
        return 2
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
