package demo;

public final class Greeting {
    public static String of(String name) {
        return "hello, " + name;
    }
}
