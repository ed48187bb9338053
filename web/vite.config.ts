/// <reference types="vitest" />
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// `npm run build` writes dist/, which crates/server/build.rs embeds into the vmfleet binary.
// `npx vite` serves the sources with the API proxied to a running `vmfleet up` (VMFLEET_URL).
const api = process.env.VMFLEET_URL ?? 'http://127.0.0.1:8080';
// The API's paths (never the dashboard's own routes, such as /vms/...).
const API = '^/(health|ping|auth/|vm/|nodes|containers|usage|metrics|openapi\\.json)';

export default defineConfig({
  plugins: [react()],
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1024 },
  server: {
    proxy: {
      [API]: { target: api },
      '^/ws/': { target: api, ws: true },
    },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
  },
});
