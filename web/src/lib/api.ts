// The public API, with the user's key: every call names what failed (problem+json).

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly field?: string,
  ) {
    super(`${title}: ${detail}`);
    this.name = "ApiError";
  }
}

export type Params = Record<string, string | number | null | undefined>;

export function withParams(path: string, params: Params = {}): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export class Api {
  constructor(
    readonly key: string,
    private readonly base = "",
    private readonly fetcher: typeof fetch = (...a) => fetch(...a),
  ) {}

  headers(): Record<string, string> {
    return { Authorization: `Bearer ${this.key}` };
  }

  async request<T>(method: string, path: string, params?: Params, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { ...this.headers(), Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp: Response;
    try {
      resp = await this.fetcher(this.base + withParams(path, params), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "API unreachable", e instanceof Error ? e.message : String(e));
    }
    if (resp.status === 204) return undefined as T;
    const text = await resp.text();
    let doc: unknown = null;
    try {
      doc = text ? JSON.parse(text) : null;
    } catch {
      doc = null;
    }
    if (!resp.ok) {
      const p = (doc ?? {}) as { title?: string; detail?: string; field?: string };
      throw new ApiError(resp.status, p.title ?? `HTTP ${resp.status}`, p.detail ?? text.slice(0, 200), p.field);
    }
    return doc as T;
  }

  get<T>(path: string, params?: Params): Promise<T> {
    return this.request<T>("GET", path, params);
  }
  post<T>(path: string, body: unknown, params?: Params): Promise<T> {
    return this.request<T>("POST", path, params, body);
  }
  put<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>("PUT", path, undefined, body);
  }
  delete<T>(path: string): Promise<T> {
    return this.request<T>("DELETE", path);
  }
}
