// The dashboard's build: the bundle goes into the Python package (linkpulse/api/static/dashboard,
// gitignored), which the API serves at `/` (linkpulse/api/routes/dashboard.py).
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir: "../linkpulse/api/static/dashboard",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    // `npm run dev` against a local API (linkpulse serve)
    proxy: { "/v1": "http://127.0.0.1:8000" },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
