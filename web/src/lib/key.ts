// The API key: taken once from ?key= (then kept in sessionStorage and removed from the address
// bar, so it is not bookmarked or shared by copying the URL), or typed into the key form.

const SLOT = "linkpulse.key";

export interface KeyEnv {
  href: string;
  storage: Pick<Storage, "getItem" | "setItem" | "removeItem">;
  replaceUrl(url: string): void;
}

/** The key from the URL (stored, and the URL cleaned) or from this tab's storage. */
export function takeKey(env: KeyEnv): string | null {
  const url = new URL(env.href);
  const fromUrl = url.searchParams.get("key");
  if (fromUrl !== null) {
    url.searchParams.delete("key");
    env.replaceUrl(url.pathname + (url.search === "?" ? "" : url.search) + url.hash);
    const key = fromUrl.trim();
    if (key) {
      env.storage.setItem(SLOT, key);
      return key;
    }
  }
  return env.storage.getItem(SLOT);
}

export function saveKey(env: KeyEnv, key: string): void {
  env.storage.setItem(SLOT, key.trim());
}

export function forgetKey(env: KeyEnv): void {
  env.storage.removeItem(SLOT);
}
