/// <reference types="vite/client" />

interface ImportMetaEnv {
  readonly VITE_DEPLOYMENT_ID?: string;
  readonly VITE_CART_SCHEMA?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
