#!/bin/sh
# Re-vendor three.js for the traces viewer (`make vendor-js`): the pinned release from the npm registry, the parts the
# pages use (renderer, points, lines, orbit controls) bundled into one minified ES module by esbuild, and its LICENSE.
# The pages load vendor/three.min.js from the viewer itself: nothing is fetched from a CDN at run time.
set -eu
THREE=0.187.0
ESBUILD=0.25.10
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts "three@$THREE" "esbuild@$ESBUILD" >/dev/null
cat > entry.js <<'JS'
export { BufferGeometry, Color, Float32BufferAttribute, Group, LineBasicMaterial, LineSegments, PerspectiveCamera,
  Points, PointsMaterial, Scene, WebGLRenderer } from 'three';
export { OrbitControls } from 'three/addons/controls/OrbitControls.js';
JS
./node_modules/.bin/esbuild entry.js --bundle --minify --format=esm --legal-comments=none \
  --banner:js="/* three.js r${THREE#0.} (MIT, see LICENSE) bundled by rl/traces_view/vendor.sh */" \
  --outfile="$here/vendor/three.min.js"
cp node_modules/three/LICENSE "$here/vendor/LICENSE"
echo "vendored three@$THREE into $here/vendor"
